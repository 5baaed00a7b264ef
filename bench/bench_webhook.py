"""Measure the webhook receiver against a bare producer sending the same records.

Starts an embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set) and the
receiver as its own process (``fleetstream webhook``), builds ``/pushgps``
bodies of 50 records from the recorded traces, then measures:

* baseline: one aiokafka producer in this process encoding each record as a
  ``RawEvent`` and sending it, ``--clients`` batches in flight, each batch
  awaited as a whole (the receiver's acknowledgement rule);
* receiver: ``--clients`` concurrent HTTP clients posting the bodies.

Both runs write to their own topic prefix and both are checked to have stored
every record. Prints pushes/s, records/s and the receiver/baseline ratio.
Run: ``python -m bench.bench_webhook [--clients 16] [--pushes 400] [--figures P]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.figures import Figure, write_figures
from fakeplatform.pusher import gps_record
from fakeplatform.traces import Replay, load_traces
from fleetstream.codec import codec
from fleetstream.embedded import EmbeddedBroker, free_port, wait_for_port
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.settings import Settings
from fleetstream.topics import RAW_TOPICS

TOKEN = "bench-push-token"
BATCH = 50


def bodies(pushes: int) -> list[list[dict]]:
    """Return ``pushes`` batches of distinct pushgps records from the traces."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    replay = Replay(load_traces(), start, speedup=1.0, loop=True)
    needed = pushes * BATCH
    records, until = [], start
    while len(records) < needed:
        since, until = until, until + timedelta(hours=1)
        records.extend(gps_record(d) for d in replay.deliveries(since, until))
    records = records[:needed]
    return [records[i : i + BATCH] for i in range(0, needed, BATCH)]


async def count_messages(settings: Settings, topic: str, expected: int) -> int:
    """Return how many messages ``topic`` holds, reading until ``expected`` or idle."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, idle_since = 0, time.monotonic()
        while seen < expected and time.monotonic() - idle_since < 5:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            got = sum(len(records) for records in batch.values())
            seen += got
            if got:
                idle_since = time.monotonic()
        return seen
    finally:
        await consumer.stop()


async def run_baseline(settings: Settings, batches: list[list[dict]], clients: int):
    raw = codec("RawEvent")
    topic = settings.topic("raw", "position")
    producer = make_producer(settings)
    await producer.start()
    queue = list(reversed(batches))

    async def client() -> None:
        while queue:
            batch = queue.pop()
            now = datetime.now(UTC)
            futures = []
            for record in batch:
                value = raw.encode(
                    {
                        "source": "push",
                        "origin": "pushgps",
                        "received_at": now,
                        "imei": record["deviceImei"],
                        "payload": json.dumps(record, ensure_ascii=False),
                        "request_id": uuid.uuid4().hex,
                    }
                )
                key = record["deviceImei"].encode()
                futures.append(await producer.send(topic, value, key=key))
            await asyncio.gather(*futures)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def run_receiver(url: str, batches: list[list[dict]], clients: int):
    forms = [urlencode({"token": TOKEN, "data_list": json.dumps(b)}) for b in batches]
    queue = list(reversed(forms))
    headers = {"content-type": "application/x-www-form-urlencoded"}
    failures = []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            response = await http.post(url, content=queue.pop(), headers=headers)
            if response.status_code != 200:
                failures.append(response.status_code)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} pushes failed: {sorted(set(failures))}")
    return elapsed


def start_receiver(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_WEBHOOK_PUSH_TOKEN": TOKEN,
        "FLEETSTREAM_WEBHOOK_HOST": "127.0.0.1",
        "FLEETSTREAM_WEBHOOK_PORT": str(port),
        "FLEETSTREAM_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "fleetstream.cli", "webhook"]
    process = subprocess.Popen(
        command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    wait_for_port("127.0.0.1", port, timeout=30)
    return process


async def main(clients: int, pushes: int) -> list[Figure]:
    state = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not servers:
        broker = EmbeddedBroker(free_port(), state / "tansu.log").start()
        servers = broker.bootstrap_servers
    profile = (
        "embedded" if broker else os.environ.get("FLEETSTREAM_BROKER_PROFILE", "kafka")
    )
    run_id = uuid.uuid4().hex[:8]

    def settings_for(name: str) -> Settings:
        return Settings(
            environment="test",
            kafka_bootstrap_servers=servers,
            broker_profile=profile,
            topic_prefix=f"bench{name}{run_id}",
            webhook_push_token=TOKEN,
        )

    base, recv = settings_for("base"), settings_for("recv")
    batches = bodies(pushes)
    records = sum(len(b) for b in batches)
    receiver = None
    try:
        for settings in (base, recv):
            await ensure_topics(settings, RAW_TOPICS)
        port = free_port()
        receiver = start_receiver(recv, port, state / "webhook.log")
        url = f"http://127.0.0.1:{port}/pushgps"
        # One warm-up push so the receiver's producer has its metadata.
        await run_receiver(url, batches[:1], 1)

        baseline_s = await run_baseline(base, batches, clients)
        receiver_s = await run_receiver(url, batches[1:], clients)
        stored_base = await count_messages(base, base.topic("raw", "position"), records)
        stored_recv = await count_messages(recv, recv.topic("raw", "position"), records)
    finally:
        if receiver is not None:
            receiver.send_signal(signal.SIGTERM)
            receiver.wait(30)
        if broker is not None:
            broker.stop()
        shutil.rmtree(state, ignore_errors=True)

    pushed = len(batches) - 1
    base_rate = records / baseline_s
    recv_rate = pushed * BATCH / receiver_s
    print(f"broker: {profile}, clients: {clients}, records per push: {BATCH}")
    print(
        f"baseline producer: {len(batches) / baseline_s:8.1f} batches/s "
        f"{base_rate:9.0f} records/s  stored {stored_base}/{records}"
    )
    print(
        f"webhook receiver : {pushed / receiver_s:8.1f} pushes/s  "
        f"{recv_rate:9.0f} records/s  stored {stored_recv}/{records}"
    )
    print(f"ratio receiver/baseline (records/s): {recv_rate / base_rate:.2f}")
    if stored_base != records or stored_recv != records:
        raise RuntimeError("a run did not store every record it was sent")
    return [Figure("webhook receiver vs bare producer", "rec/s", recv_rate, base_rate)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pushes", type=int, default=400)
    parser.add_argument("--figures", help="also write the headline figures here")
    args = parser.parse_args()
    write_figures(args.figures, asyncio.run(main(args.clients, args.pushes)))

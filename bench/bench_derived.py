"""Measure the derived worker: throughput, state written, recovery time.

Starts an embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), fills
``clean.position`` with moving fixes of many devices, then measures:

* the derived worker with the usual producer (batches of up to
  ``kafka_producer_max_batch_bytes``), timed from its first to its last fix so
  the group join is not counted;
* the same with every record produced alone (``max_batch_size`` 1 byte), which
  is what faust's own tables would need on the embedded broker;
* the state written per fix, and the time a fresh worker takes to recover the
  state of every device.

Run: ``python -m bench.bench_derived [--fixes N] [--figures PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from bench.figures import Figure, write_figures
from fleetstream.codec import codec
from fleetstream.embedded import EmbeddedBroker, free_port
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.settings import Settings
from fleetstream.topics import CLEAN
from processors.derived import DerivedWorker

DEVICES = 200
START_MS = 1_741_560_000_000
DEGREE_M = 111_195.0


def positions(count: int) -> list[tuple[bytes, bytes]]:
    """Return ``count`` fixes of ``DEVICES`` devices driving 10 m every 10 s."""
    codec_ = codec("Position")
    out = []
    for n in range(count):
        device, step = n % DEVICES, n // DEVICES
        imei = f"86000200{device:07d}"
        record = {
            "imei": imei,
            "gps_time": START_MS + step * 10_000,
            "lat": -1.3 + step * 100 / DEGREE_M,
            "lng": 36.8 + device / 1_000,
            "speed_kmh": 36.0,
            "acc_on": (step // 120) % 2 == 0,
            "pos_type": "GPS",
            "source": "push",
            "origin": "pushgps",
            "received_at": START_MS + step * 10_000,
        }
        out.append((imei.encode(), codec_.encode(record)))
    return out


async def fill(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        topic = settings.topic(CLEAN, "position")
        sent = [await producer.send(topic, v, key=k) for k, v in messages]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def measure(settings: Settings, expected: int) -> tuple[float, DerivedWorker]:
    """Run a worker until it has accepted ``expected`` fixes; return fixes/s."""
    worker = DerivedWorker(settings)
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.run(stop))
    await worker.ready.wait()
    while worker.counts["fixes"] == 0:
        await asyncio.sleep(0.005)
    first = time.perf_counter()
    while worker.counts["fixes"] < expected:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - first
    stop.set()
    await task
    return expected / elapsed, worker


async def state_bytes(settings: Settings) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        topic = settings.topic("state", "derived")
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total, idle = 0, 0
        while idle < 5:
            batch = await consumer.getmany(timeout_ms=100)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                total += sum(len(r.value or b"") + len(r.key) for r in records)
        return total
    finally:
        await consumer.stop()


async def recovery_seconds(settings: Settings) -> tuple[float, float]:
    worker = DerivedWorker(settings)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.ensure_future(worker.run(stop))
    await worker.ready.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return elapsed, worker.recovery_seconds


async def main(fixes: int, servers: str, profile: str, state_dir: Path) -> list[Figure]:
    messages = positions(fixes)
    rates = {}
    for label, batch_bytes in (("batched", 262_144), ("one record per batch", 1)):
        settings = Settings(
            environment="test",
            kafka_bootstrap_servers=servers,
            broker_profile=profile,
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
            state_dir=state_dir,
            kafka_producer_max_batch_bytes=batch_bytes,
            webhook_push_token="bench",
        )
        await ensure_topics(settings)
        await fill(settings, messages)
        rates[label], _ = await measure(settings, fixes)
        print(f"{label:>22}: {rates[label]:9.0f} fixes/s")
    size = await state_bytes(settings)
    print(f"{'state written':>22}: {size / fixes:9.0f} bytes per fix")
    ready, recovery = await recovery_seconds(settings)
    print(f"{'restart to ready':>22}: {ready:9.2f} s (group join included)")
    print(f"{'state recovery':>22}: {recovery:9.2f} s ({DEVICES} devices)")
    print(f"{'ratio':>22}: {rates['batched'] / rates['one record per batch']:9.1f}x")
    return [
        Figure(
            "derived worker, batched vs 1 rec/batch",
            "fixes/s",
            rates["batched"],
            rates["one record per batch"],
        ),
        Figure("derived state recovery", "s", recovery, on_ratio=False),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixes", type=int, default=40_000)
    parser.add_argument("--figures", help="also write the headline figures here")
    args = parser.parse_args()
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        if servers is None:
            broker = EmbeddedBroker(free_port(), Path(tmp) / "tansu.log").start()
            servers, profile = broker.bootstrap_servers, "embedded"
        else:
            profile = os.environ.get("FLEETSTREAM_BROKER_PROFILE", "kafka")
        try:
            figures = asyncio.run(main(args.fixes, servers, profile, Path(tmp)))
        finally:
            if broker is not None:
                broker.stop()
    write_figures(args.figures, figures)

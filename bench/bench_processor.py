"""Measure the processor against a bare consumer on the same raw topic.

Starts an embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), fills
``raw.position`` with distinct pushgps and track.list fixes, then measures:

* baseline: one aiokafka consumer reading and decoding every ``RawEvent``;
* processor: the faust app cleaning, de-duplicating and producing every one
  of them to ``clean.position``, timed from its first to its last record so the
  group join is not counted.

Both run on the same machine as the broker, whose load varies, so each round
uses a fresh topic and the best of the rounds is printed alongside each one.
Run: ``python -m bench.bench_processor [--clean-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from fleetstream.codec import codec
from fleetstream.embedded import EmbeddedBroker, free_port
from fleetstream.kafka import ensure_topics, make_consumer, make_producer
from fleetstream.settings import Settings
from processors.app import AGENT_MODULES, run

DEVICES = 500
START_MS = 1_741_560_000_000  # 2025-03-09T22:40:00Z


def raw_positions(count: int) -> list[tuple[bytes, bytes]]:
    """Return ``count`` distinct raw fixes spread over ``DEVICES`` devices."""
    raw = codec("RawEvent")
    received_at = START_MS + count * 1000
    messages = []
    for n in range(count):
        imei = f"86000100{n % DEVICES:07d}"
        seconds = (START_MS // 1000) + n // DEVICES * 10
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        if n % 2:
            origin, source = "pushgps", "push"
            payload = {
                "deviceImei": imei,
                "gpsTime": when,
                "gateTime": when,
                "lat": -1.2631 + n * 1e-7,
                "lng": 36.80465,
                "gpsSpeed": 43,
                "direction": 297,
                "satelliteNum": 13,
                "gpsMode": 0,
                "postType": 1,
                "acc": 1,
                "altitude": 1676,
                "distance": 18243112,
            }
        else:
            origin, source = "jimi.device.track.list", "poll"
            payload = {
                "lat": -1.318402,
                "lng": 36.92155 + n * 1e-7,
                "gpsTime": when,
                "direction": "284",
                "gpsSpeed": "38.0",
                "posType": 1,
                "satellite": 11,
                "ignition": "ON",
                "accStatus": "ON",
            }
        value = raw.encode(
            {
                "source": source,
                "origin": origin,
                "received_at": received_at,
                "imei": imei,
                "payload": json.dumps(payload),
                "request_id": None,
            }
        )
        messages.append((imei.encode(), value))
    return messages


async def fill(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce the raw messages to raw.position."""
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        topic = settings.topic("raw", "position")
        for key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def bare_consume(settings: Settings, count: int) -> float:
    """Return records/s of a plain consumer that reads and decodes the topic."""
    raw = codec("RawEvent")
    consumer = make_consumer(
        settings, settings.topic("raw", "position"), group_id=f"bare-{uuid.uuid4()}"
    )
    await consumer.start()
    seen = 0
    started = None
    try:
        while seen < count:
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batches.values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    raw.decode(record.value)
                seen += len(records)
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def processor_rate(
    settings: Settings, count: int, agent_modules: tuple[str, ...]
) -> tuple[float, dict]:
    """Return records/s of the processor app and its counts."""
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    worker = asyncio.create_task(
        run(
            settings,
            stop,
            on_ready=lambda app, router: ready.set_result(router),
            agent_modules=agent_modules,
        )
    )
    router = await ready
    first = last = None
    while True:
        done = router.counts["position"] + router.counts["deadletter"]
        done += router.counts["duplicate"]
        now = time.perf_counter()
        if done and first is None:
            first = now
        if done >= count:
            last = now
            break
        await asyncio.sleep(0.01)
    stop.set()
    await worker
    return count / (last - first), dict(router.counts)


async def one_round(
    servers: str, profile: str, count: int, partitions: int, modules: tuple[str, ...]
) -> tuple[float, float, dict]:
    """Return (bare rate, processor rate, counts) on a fresh topic prefix."""
    settings = Settings(
        environment="test",
        kafka_bootstrap_servers=servers,
        broker_profile=profile,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
        topic_partitions=partitions,
        state_dir=Path(tempfile.mkdtemp()),
    )
    await ensure_topics(settings)
    await fill(settings, raw_positions(count))
    bare = await bare_consume(settings, count)
    rate, counts = await processor_rate(settings, count, modules)
    return bare, rate, counts


async def main(count: int, partitions: int, clean_only: bool, rounds: int) -> None:
    """Measure both rates ``rounds`` times and print each round and the best."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not servers:
        log = Path(tempfile.mkdtemp()) / "tansu.log"
        broker = EmbeddedBroker(free_port(), log).start()
        servers = broker.bootstrap_servers
    profile = (
        "embedded" if broker else os.environ.get("FLEETSTREAM_BROKER_PROFILE", "kafka")
    )
    modules = () if clean_only else AGENT_MODULES
    agents = "raw cleaner only" if clean_only else "with every registered agent"
    print(f"{count} records, {partitions} partitions, {profile} broker, {agents}")
    print(f"{'round':>5} {'bare rec/s':>12} {'processor rec/s':>16} {'ratio':>6}")
    results = []
    try:
        for n in range(1, rounds + 1):
            bare, rate, counts = await one_round(
                servers, profile, count, partitions, modules
            )
            assert counts.get("position") == count, counts
            results.append((bare, rate))
            print(f"{n:>5} {bare:>12,.0f} {rate:>16,.0f} {rate / bare:>6.2f}")
    finally:
        if broker:
            broker.stop()
    best_bare = max(bare for bare, _ in results)
    best_rate = max(rate for _, rate in results)
    print(
        f"{'best':>5} {best_bare:>12,.0f} {best_rate:>16,.0f} "
        f"{best_rate / best_bare:>6.2f}  (targets: ratio >= 0.3, >= 20,000/s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clean-only", action="store_true", help="leave out the derivation agents"
    )
    args = parser.parse_args()
    asyncio.run(main(args.records, args.partitions, args.clean_only, args.rounds))

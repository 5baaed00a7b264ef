"""At-least-once: ``fleetstream process`` killed with -9 mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import TopicPartition

from fleetstream.codec import codec
from fleetstream.kafka import ensure_topics, make_consumer, make_producer

FLEETSTREAM = Path(sys.executable).parent / "fleetstream"
RECEIVED_AT = 1741590000000  # 2025-03-10T07:00:00Z
DEVICES = 50
FIXES = 30_000


def fixes(count: int) -> list[tuple[bytes, bytes]]:
    raw = codec("RawEvent")
    messages = []
    for n in range(count):
        imei = f"8600010000{n % DEVICES:05d}"
        seconds = 1741500000 + n // DEVICES * 5
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
        payload = {
            "deviceImei": imei,
            "gpsTime": when,
            "lat": -1.26 - n * 1e-6,
            "lng": 36.8,
            "gpsSpeed": 40,
            "postType": 1,
            "acc": 1,
        }
        value = raw.encode(
            {
                "source": "push",
                "origin": "pushgps",
                "received_at": RECEIVED_AT,
                "imei": imei,
                "payload": json.dumps(payload),
                "request_id": None,
            }
        )
        messages.append((imei.encode(), value))
    return messages


def start_worker(settings) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_STATE_DIR": str(settings.state_dir),
        "FLEETSTREAM_WEBHOOK_PUSH_TOKEN": "test-push-token",
        "DATABASE_URL": settings.database_url,
        # Small batches so that the kill lands between commits.
        "FLEETSTREAM_PROCESS_BATCH_MAX_RECORDS": "500",
    }
    return subprocess.Popen(
        [str(FLEETSTREAM), "process"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class CleanReader:
    """Read clean.position from the start, collecting (imei, gps_time) facts."""

    def __init__(self, settings) -> None:
        self.consumer = make_consumer(
            settings, settings.topic("clean", "position"), group_id=None
        )
        self.facts: list[tuple[str, object]] = []
        self.decode = codec("Position").decode

    async def read_until(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    value = self.decode(record.value)
                    self.facts.append((value["imei"], value["gps_time"]))


async def committed(settings, group: str) -> int:
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        topic = settings.topic("raw", "position")
        total = 0
        for partition in range(settings.topic_partitions):
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


async def test_kill_9_mid_stream_then_restart_loses_nothing(settings):
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    for key, value in fixes(FIXES):
        await producer.send(settings.topic("raw", "position"), value=value, key=key)
    await producer.stop()
    reader = CleanReader(settings)
    await reader.consumer.start()
    try:
        first = start_worker(settings)
        await reader.read_until(lambda: len(reader.facts) > 0, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        seen_at_kill = len(reader.facts)
        assert 0 < seen_at_kill < FIXES, "the kill must land mid-stream"

        second = start_worker(settings)
        await reader.read_until(lambda: len(set(reader.facts)) >= FIXES, timeout=90)
        await asyncio.sleep(2)  # let the second worker commit
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 0, stderr.decode()[-2000:]
        await reader.read_until(lambda: False, timeout=1)  # collect stragglers
    finally:
        await reader.consumer.stop()

    distinct = set(reader.facts)
    assert len(distinct) == FIXES  # nothing lost
    repeats = len(reader.facts) - FIXES
    assert 0 <= repeats <= FIXES  # repeats only of facts the sink's key absorbs
    assert await committed(settings, f"{settings.topic_prefix}-process-clean") == FIXES


async def produce_slowly(settings, messages, chunk: int = 500, pause: float = 0.25):
    """Produce ``messages`` in chunks, so that workers join and leave mid-stream."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for start in range(0, len(messages), chunk):
            for key, value in messages[start : start + chunk]:
                await producer.send(settings.topic("raw", "position"), value, key=key)
            await producer.flush()
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def test_two_workers_share_and_hand_over_partitions(settings):
    """A second worker joins mid-stream, the first leaves: nothing is lost."""
    await ensure_topics(settings)
    reader = CleanReader(settings)
    await reader.consumer.start()
    feeding = None
    try:
        first = start_worker(settings)
        feeding = asyncio.create_task(produce_slowly(settings, fixes(FIXES)))
        await reader.read_until(lambda: len(reader.facts) > 0, timeout=60)
        second = start_worker(settings)
        await reader.read_until(lambda: False, timeout=3)  # both share the group
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=30)
        assert first.returncode == 0, stderr.decode()[-2000:]
        assert not feeding.done(), "the hand-over must happen mid-stream"
        await feeding
        await reader.read_until(lambda: len(set(reader.facts)) >= FIXES, timeout=90)
        await asyncio.sleep(2)
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 0, stderr.decode()[-2000:]
    finally:
        if feeding is not None:
            feeding.cancel()
        await reader.consumer.stop()

    assert len(set(reader.facts)) == FIXES
    assert await committed(settings, f"{settings.topic_prefix}-process-clean") == FIXES

"""Operator tools: consumer lag and rewinding a group to replay a topic.

Lag is ``high watermark - committed offset`` per partition. On real Kafka the
high watermark comes from ListOffsets (``end_offsets``). The embedded broker
answers ListOffsets with the base offset of the last batch plus one, which is
too low after a multi-record batch, so with ``broker_profile=embedded`` the high
watermark is read from a Fetch response instead (``consumer.highwater``), which
that broker reports correctly.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    UnknownMemberIdError,
)
from aiokafka.structs import OffsetAndMetadata

from fleetstream.errors import ConfigError
from fleetstream.kafka import make_consumer
from fleetstream.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    high_watermark: int

    @property
    def lag(self) -> int:
        return self.high_watermark - (self.committed or 0)


async def _partitions(settings: Settings, topics: list[str]) -> list[TopicPartition]:
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = []
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                tps.append(TopicPartition(topic, partition))
        return tps
    finally:
        await consumer.stop()


async def high_watermarks(
    settings: Settings, tps: list[TopicPartition], timeout_s: float = 5.0
) -> dict[TopicPartition, int]:
    """Return the high watermark of each partition (see the module docstring)."""
    if not tps:
        return {}
    consumer = make_consumer(
        settings, group_id=None, max_partition_fetch_bytes=1024, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        if settings.broker_profile == "kafka":
            return dict(await consumer.end_offsets(tps))
        await consumer.seek_to_beginning(*tps)
        marks: dict[TopicPartition, int] = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(marks) < len(tps):
            if asyncio.get_running_loop().time() > deadline:
                missing = [str(tp) for tp in tps if tp not in marks]
                raise TimeoutError(f"no fetch response for {', '.join(missing)}")
            await consumer.getmany(timeout_ms=50)
            for tp in tps:
                mark = consumer.highwater(tp)
                if mark is not None:
                    marks[tp] = mark
                    consumer.pause(tp)
        return marks
    finally:
        await consumer.stop()


async def _groups(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        return {group[0] for group in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _fleetstream_groups(settings: Settings) -> list[str]:
    groups = await _groups(settings)
    return sorted(g for g in groups if g.startswith(settings.topic_prefix))


async def _committed(
    settings: Settings, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    # Always pass the partitions: the embedded broker drops the connection when
    # OffsetFetch asks for "all partitions".
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def consumer_lag(
    settings: Settings, group: str, topics: list[str]
) -> list[PartitionLag]:
    """Return the lag of ``group`` on every partition of ``topics``."""
    tps = await _partitions(settings, topics)
    marks = await high_watermarks(settings, tps)
    committed = await _committed(settings, group, tps)
    return [
        PartitionLag(group, tp.topic, tp.partition, committed[tp], marks[tp])
        for tp in tps
    ]


async def print_lag(settings: Settings, out=sys.stdout) -> None:
    """Print the lag of every group whose name starts with the topic prefix."""
    from fleetstream.topics import ALL_TOPICS

    topics = [spec.name(settings) for spec in ALL_TOPICS]
    out.write(f"{'group':40} {'topic':40} {'part':>4} {'committed':>10} {'lag':>8}\n")
    for group in await _fleetstream_groups(settings):
        rows = await consumer_lag(settings, group, topics)
        for row in rows:
            if row.committed is None:
                continue
            out.write(
                f"{row.group:40} {row.topic:40} {row.partition:>4} "
                f"{row.committed:>10} {row.lag:>8}\n"
            )


async def replay(
    settings: Settings, *, group: str, topic: str, join_timeout_s: float = 60.0
) -> int:
    """Rewind ``group`` to the start of ``topic``; return the records to re-read.

    The group's consumers must be stopped first: a running member would commit
    its own positions over the rewound ones. When they restart they re-read the
    topic; idempotent writes downstream make that safe.

    A broker accepts a commit from outside the group only while the group has
    no members. The embedded broker ignores LeaveGroup, so stopped members
    linger there until they expire; in that case (and whenever the plain commit
    is refused) the rewind joins the group as its only member and commits from
    inside it.
    """
    tps = await _partitions(settings, [topic])
    if not tps:
        raise ConfigError(f"topic {topic!r} does not exist")
    groups = await _groups(settings)
    if group not in groups:
        raise ConfigError(
            f"consumer group {group!r} does not exist",
            hint="known groups: " + (", ".join(sorted(groups)) or "none"),
        )
    client_id = f"fleetstream-replay-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(settings, group_id=group, client_id=client_id)
    await consumer.start()
    try:
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        rewind = {tp: OffsetAndMetadata(starts[tp], "") for tp in tps}
        try:
            await consumer.commit(rewind)
            committed = True
        except (CommitFailedError, UnknownMemberIdError, IllegalGenerationError):
            committed = False
    finally:
        await consumer.stop()
    if not committed:
        logger.info("group %s still has members on the broker; joining it", group)
        await _commit_as_member(settings, group, topic, rewind, join_timeout_s)
    marks = await high_watermarks(settings, tps)
    total = sum(marks[tp] - starts[tp] for tp in tps)
    logger.info("rewound group %s on %s: %d records to re-read", group, topic, total)
    return total


async def _commit_as_member(
    settings: Settings,
    group: str,
    topic: str,
    offsets: dict[TopicPartition, OffsetAndMetadata],
    timeout_s: float,
) -> None:
    consumer = make_consumer(settings, topic, group_id=group)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # Members that stopped without leaving expire within a session timeout;
        # a member still holding partitions after that is alive.
        patience = settings.kafka_tuning()["session_timeout_ms"] / 1000 * 2
        first_assignment: float | None = None
        while consumer.assignment() != set(offsets):
            now = loop.time()
            if consumer.assignment() and first_assignment is None:
                first_assignment = now
            if (first_assignment is not None and now - first_assignment > patience) or (
                now > deadline
            ):
                raise ConfigError(
                    f"group {group} has live members holding partitions of {topic}",
                    hint="stop the group's consumers, then rewind it",
                )
            # Joining happens inside the poll; records read here are discarded.
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def follow(
    settings: Settings,
    *,
    group: str,
    topic: str,
    interval_seconds: float = 5.0,
    timeout_seconds: float | None = None,
) -> int:
    """Log the progress of ``group`` through ``topic`` until it has caught up.

    Returns the remaining lag (0 once caught up, more if the timeout passed).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    first: int | None = None
    while True:
        rows = await consumer_lag(settings, group, [topic])
        remaining = sum(max(row.lag, 0) for row in rows)
        # New records may arrive while the group is stopped: the total grows.
        first = remaining if first is None else max(first, remaining)
        done = first - remaining
        elapsed = loop.time() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        logger.info(
            "%s on %s: %d/%d re-read (%.0f%%), %.0f records/s, lag %d",
            group,
            topic,
            done,
            first,
            100.0 * done / first if first else 100.0,
            rate,
            remaining,
        )
        if remaining == 0:
            return 0
        if timeout_seconds is not None and elapsed > timeout_seconds:
            return remaining
        await asyncio.sleep(interval_seconds)

"""The batched reader of the raw topics, run as a service of the faust app.

faust hands records to agents one event at a time; on the 2-core development
machine an agent that does nothing but count tops out near 15,000 events/s
(18,000 with uvloop), below what a backfill needs. ``RawCleaner`` therefore
reads the raw topics with one aiokafka consumer in batches, routes each batch
through ``Router`` and sends the results with one producer. The faust app starts
and stops it with its agents, so one worker process runs both.

Delivery is at-least-once. A batch's offsets are committed only after every
message produced from it is acknowledged by the broker, and batches are
committed in the order they were read, so a commit never passes a record that is
still in flight, whatever ``process_concurrency`` (batches in flight) is. A
crash at any point leads to reprocessing, never to loss; repeats after a crash
reach the clean topics again and the sinks' natural keys absorb them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from mode import Service

from fleetstream.kafka import make_consumer, make_producer
from fleetstream.settings import Settings
from processors.routing import Outgoing, Router

logger = logging.getLogger(__name__)

STATS_INTERVAL_SECONDS = 60.0
# Delivered offsets are committed at most this often, and always on stop and
# before partitions are handed to another member.
COMMIT_INTERVAL_SECONDS = 1.0
PARTITION_CACHE_SIZE = 200_000


class InFlight:
    """Batches sent but not yet acknowledged, committed strictly in read order."""

    def __init__(self) -> None:
        self._batches: deque[tuple[asyncio.Future, dict[TopicPartition, int]]] = deque()

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, delivered: asyncio.Future, offsets: dict[TopicPartition, int]):
        """Queue a batch: its delivery and the offsets that follow its records."""
        self._batches.append((delivered, offsets))

    def oldest_done(self) -> bool:
        """Return True when the oldest batch is delivered (or failed)."""
        return bool(self._batches) and self._batches[0][0].done()

    async def settle_oldest(self) -> dict[TopicPartition, int]:
        """Wait for the oldest batch; return the offsets it makes committable."""
        delivered, offsets = self._batches[0]
        try:
            await delivered
        finally:
            self._batches.popleft()
        return offsets

    def cancel(self) -> None:
        """Forget every batch; their records will be read again."""
        for delivered, _ in self._batches:
            delivered.cancel()
        self._batches.clear()


class _DrainOnRevoke(ConsumerRebalanceListener):
    def __init__(self, cleaner: RawCleaner) -> None:
        self.cleaner = cleaner

    async def on_partitions_revoked(self, revoked) -> None:
        # Another member takes these partitions next: hand them over committed.
        await self.cleaner.drain()

    async def on_partitions_assigned(self, assigned) -> None:
        logger.info("raw partitions assigned: %d", len(assigned))


class RawCleaner(Service):
    """Read raw topics in batches, clean them, send, then commit."""

    def __init__(self, settings: Settings, router: Router, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.router = router
        self.group_id = f"{settings.topic_prefix}-process-clean"
        self.batch_max = settings.process_batch_max_records
        self.wait_ms = settings.process_batch_max_wait_ms
        self.concurrency = max(1, settings.process_concurrency)
        self.in_flight = InFlight()
        self._commit_lock = asyncio.Lock()
        self._committable: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self.consumer = None
        self.producer = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        # The partitioner hashes in pure Python; keys (IMEIs) repeat endlessly.
        self._partition_of: dict[tuple[str, bytes], tuple[str, int]] = {}

    async def on_start(self) -> None:
        """Start the producer, then join the group on every raw topic."""
        self.producer = make_producer(self.settings)
        await self.producer.start()
        self.consumer = make_consumer(
            self.settings, group_id=self.group_id, max_poll_records=self.batch_max
        )
        self.consumer.subscribe(self.router.raw_topics, listener=_DrainOnRevoke(self))
        await self.consumer.start()
        logger.info("reading %d raw topics", len(self.router.raw_topics))

    async def on_stop(self) -> None:
        """Commit everything delivered, then close the consumer and producer."""
        try:
            if self.consumer is not None:
                await self.drain()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
        logger.info("raw reader stopped: %s", dict(self.router.counts))

    @Service.task
    async def _read(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(
                timeout_ms=max(self.wait_ms, 1), max_records=self.batch_max
            )
            if batches:
                await self.process(batches)

    @Service.timer(STATS_INTERVAL_SECONDS)
    async def _log_counts(self) -> None:
        counts = self.router.counts
        logger.info(
            "cleaned so far: %d positions, %d dead letters (%d of unknown origin), "
            "%d repeats dropped",
            counts["position"],
            counts["deadletter"],
            self.router.no_cleaner,
            counts["duplicate"],
        )

    async def process(self, batches: dict) -> None:
        """Route and send one fetched batch; commit what has been delivered."""
        route_batch = self.router.route_batch
        outgoing: list[Outgoing] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            outgoing += route_batch(tp.topic, tp.partition, records)
            offsets[tp] = records[-1].offset + 1
        pending = await self._send(outgoing)
        self.in_flight.add(asyncio.ensure_future(_all(pending)), offsets)
        async with self._commit_lock:
            while (
                len(self.in_flight) >= self.concurrency or self.in_flight.oldest_done()
            ):
                await self._settle_oldest()
            if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_SECONDS:
                await self._commit()

    async def _send(self, outgoing: list[Outgoing]) -> list[asyncio.Future]:
        """Send messages in one record batch per partition, keeping their order.

        Partitions are chosen by the producer's default partitioner, so a key
        lands where a plain ``send`` would put it.
        """
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        cached = self._partition_of
        for out in outgoing:
            destination = cached.get((out.topic, out.key))
            if destination is None:
                destination = (out.topic, await self._partition(out.topic, out.key))
                if out.key is not None:
                    if len(cached) >= PARTITION_CACHE_SIZE:
                        cached.clear()
                    cached[(out.topic, out.key)] = destination
            by_partition.setdefault(destination, []).append(out)
        pending = []
        for (topic, partition), messages in by_partition.items():
            batch = self.producer.create_batch()
            for out in messages:
                if batch.append(key=out.key, value=out.value, timestamp=None) is None:
                    batch.close()
                    pending.append(await self._send_batch(batch, topic, partition))
                    batch = self.producer.create_batch()
                    batch.append(key=out.key, value=out.value, timestamp=None)
            batch.close()
            pending.append(await self._send_batch(batch, topic, partition))
        return pending

    async def _partition(self, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self._partitions[topic] = partitions
        return self._partitioner(key, partitions, partitions)

    async def _send_batch(self, batch, topic: str, partition: int) -> asyncio.Future:
        return await self.producer.send_batch(batch, topic, partition=partition)

    async def drain(self) -> None:
        """Wait for every batch in flight and commit them all."""
        async with self._commit_lock:
            while len(self.in_flight):
                await self._settle_oldest()
            await self._commit()

    async def _settle_oldest(self) -> None:
        try:
            offsets = await self.in_flight.settle_oldest()
        except Exception:
            # Nothing later may be committed past an undelivered batch.
            self.in_flight.cancel()
            self._committable.clear()
            logger.error("send failed; offsets not committed, will be reprocessed")
            raise
        self._committable.update(offsets)

    async def _commit(self) -> None:
        # Partitions lost in a rebalance are re-read by their new owner.
        assigned = self.consumer.assignment()
        owned = {tp: n for tp, n in self._committable.items() if tp in assigned}
        self._committable.clear()
        self._last_commit = time.monotonic()
        if not owned:
            return
        try:
            await self.consumer.commit(owned)
        except KafkaError as exc:
            # Typically a rebalance in progress: the new owner re-reads them.
            logger.warning(
                "commit of %d partitions failed (%s); will be reprocessed",
                len(owned),
                type(exc).__name__,
            )


async def _all(pending: list[Awaitable]) -> None:
    if pending:
        await asyncio.gather(*pending)

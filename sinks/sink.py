"""Consume one clean topic into PostgreSQL in batches, at least once, idempotently.

A batch is read with ``getmany`` up to ``sink_batch_max_records`` records or
``sink_batch_max_wait_ms`` after its first record, written in one database
transaction, and only then are its offsets committed, partition by partition. A
crash between the two re-reads the batch, and the tables' natural keys make the
rewrite change nothing.

Under a backlog (a batch closed by the record limit, so more are coming), the
transaction commits without waiting for its WAL to reach disk (the session runs
with ``synchronous_commit`` off), and the batch's offsets wait until PostgreSQL
reports its WAL flushed past the commit: a crash of the server can lose such a
batch, but never one whose offsets were committed. A batch closed by the wait
turns it on for its own transaction, which flushes every earlier one too; while
idle, the sink polls the flush position. If the connection fails while batches
await their flush, the sink rewinds its partitions to the committed offsets and
reads them again. ``sink_async_commit=False`` waits for every flush.

Records that cannot be decoded, and rows PostgreSQL rejects, go to the
dead-letter topic with their origin and the reason before the batch's offsets
are committed; the rest of the batch is written. Any other failure of the
database or the broker pauses the sink: its partitions are paused (the consumer
keeps its group membership), the batch is retried with exponential backoff up
to a ceiling, for as long as it takes, and nothing is committed meanwhile.

A permanent configuration error (a URL that is not PostgreSQL's, refused
credentials, a database that does not exist, tables not migrated) is not waited
out: the sink checks its database before it joins its group, retrying only
transient failures (connection refused, timeouts, a server starting or shutting
down), and raises ``ConfigError`` on a permanent one. Once running, the same
errors stop it too, except a missing table or column: a migration swapping
tables is waited out like an outage.

A stop never waits for a broker without end: each offset commit is bounded by
the Kafka request timeout, and each step of the stop by at most 5 s; offsets
left uncommitted are rewritten, without duplicates, by the next run.

Dead letters are delivered at least once: a retry after a failed send, or a
crash before the offset commit, can publish the same dead letter twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from fleetstream.codec import codec
from fleetstream.errors import ConfigError
from fleetstream.kafka import ensure_topics, make_consumer, make_producer
from fleetstream.runtime import sleep_or_stop
from fleetstream.settings import Settings
from fleetstream.topics import CLEAN, DEADLETTER_TOPIC, spec
from sinks.columnar import INDEX, FrameDecoder, one_line
from sinks.kinds import SinkSpec
from sinks.stats import SinkStats
from sinks.writer import BatchWriter, Encoded

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that no wait can fix, with the hint an operator needs.
MIGRATE = "apply the migrations: fleetstream migrate"
DSN_HINT = "DATABASE_URL must be postgresql://user@host:port/database"
PERMANENT: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.ClientConfigurationError, DSN_HINT),
    (
        asyncpg.InvalidAuthorizationSpecificationError,
        "check the user and password in DATABASE_URL",
    ),
    (asyncpg.InvalidCatalogNameError, "create the database: fleetstream migrate"),
    (asyncpg.InsufficientPrivilegeError, "grant the sink's user its tables"),
)
# A schema that lacks the sink's tables: permanent at start, but a running sink
# waits for it, since a migration may be swapping tables.
SCHEMA_MISSING = (
    ConfigError,
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedColumnError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InvalidSchemaNameError,
)
# Failures of a service rather than of a record: wait for the service and retry.
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    KafkaError,
)
DB_COMMAND_TIMEOUT_SECONDS = 60.0
# Batches read and decoded ahead of the one being written.
READ_AHEAD = 1
# Records taken from the consumer between two turns of the event loop: building
# them holds the loop, and the batch being written waits for its replies from
# PostgreSQL meanwhile (1,000 measured faster than 5,000 and 20,000 in
# bench/bench_sink.py). Decoding runs in a thread, a batch at a time.
FETCH_STEP_RECORDS = 1000
# Where the WAL is written up to, and flushed up to, as byte positions.
WAL_POSITIONS = """
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8,
       pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::int8
"""
WAL_FLUSHED = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::int8"
# While batches await their WAL flush and none arrives, how often to look.
FLUSH_POLL_SECONDS = 0.1
# How long a stopping sink waits for the last batches' flush before it leaves
# their offsets uncommitted (to be rewritten, without duplicates, on restart).
FLUSH_WAIT_AT_STOP_SECONDS = 2.0
REASON_MAX_CHARS = 1000


def permanent_error(exc: BaseException, *, starting: bool = True) -> ConfigError | None:
    """Return the configuration error ``exc`` stands for, or None if transient."""
    if isinstance(exc, SCHEMA_MISSING):
        if not starting:
            return None
        if isinstance(exc, ConfigError):
            return exc
        return ConfigError(f"database: {type(exc).__name__}: {exc}", hint=MIGRATE)
    for kind, hint in PERMANENT:
        if isinstance(exc, kind):
            return ConfigError(f"database: {type(exc).__name__}: {exc}", hint=hint)
    if starting and isinstance(exc, ValueError):
        # Raised while parsing the URL (a port that is not a number); once
        # running, a ValueError is a row's value, not the configuration.
        return ConfigError(f"database: {type(exc).__name__}: {exc}", hint=DSN_HINT)
    return None


class Stopping(Exception):
    """The stop event was set while the sink waited to retry."""


class Rewind(Exception):
    """The connection failed while written batches awaited their WAL flush."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked) -> None:
        stats = self._sink.stats
        stats.partitions = max(stats.partitions - len(revoked), 0)
        await self._sink.release(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        # aiokafka assigns eagerly: ``assigned`` is the whole new assignment.
        self._sink.stats.partitions = len(assigned)
        self._sink.stats.assignments += 1
        logger.info(
            "sink %s: assigned partitions %s",
            self._sink.spec.kind,
            sorted(tp.partition for tp in assigned),
        )


class Sink:
    """One consumer group writing one clean topic into its tables.

    ``after_db_commit`` is awaited after each batch's database commit and before
    its offsets are committed; tests use it to crash the sink in between.
    ``group_id`` replaces the sink's own group, e.g. to replay a topic.
    """

    def __init__(
        self,
        settings: Settings,
        sink: SinkSpec,
        *,
        initial_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        stats_interval_seconds: float = 60.0,
        after_db_commit: Callable[[], Awaitable[None]] | None = None,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.spec = sink
        self.stats = SinkStats(sink.kind)
        self.topic = sink.topic(settings)
        self.group_id = group_id or sink.group_id(settings)
        self.dead_letter_topic = DEADLETTER_TOPIC.name(settings)
        self.initial_backoff_seconds = initial_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.stats_interval_seconds = stats_interval_seconds
        self.after_db_commit = after_db_commit
        # A revoked partition waits for the batch in flight at most this long,
        # well inside the time the group gives members to rejoin.
        self.revoke_wait_seconds = (
            settings.kafka_tuning()["rebalance_timeout_ms"] / 2000
        )
        self._request_timeout_seconds = settings.kafka_request_timeout_ms / 1000
        # Each step of a stop waits at most this long for a broker that is gone.
        self._stop_timeout_seconds = min(self._request_timeout_seconds, 5.0)
        self._writer = BatchWriter(sink)
        self._codec = codec(sink.schema)
        self._dead_codec = codec(DEADLETTER_TOPIC.schema)
        self._decoder = FrameDecoder(self._codec, sink.source_fields())
        self._projection = [*sink.projection(), pl.col(INDEX)]
        self._conn: asyncpg.Connection | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Next offsets whose records are durably in the database but whose
        # offsets are not committed yet.
        self._pending: dict[TopicPartition, int] = {}
        # Batches committed without waiting for the WAL flush, in commit order:
        # the WAL position after each commit and its next offsets.
        self._unflushed: list[tuple[int, dict[TopicPartition, int]]] = []
        self._batch_lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then commit the batch in hand and return.

        Raises ``ConfigError`` when the database can never be written as set up.
        """
        if not await self._database_ready(stop):
            return
        await ensure_topics(
            self.settings, (spec(CLEAN, self.spec.kind), DEADLETTER_TOPIC)
        )
        self._producer = make_producer(self.settings)
        self._consumer = make_consumer(self.settings, group_id=self.group_id)
        await self._producer.start()
        try:
            await self._consumer.start()
            self._consumer.subscribe([self.topic], listener=_Rebalance(self))
            logger.info("sink %s: consuming %s", self.spec.kind, self.topic)
            await self._consume(stop)
        finally:
            for client in (self._consumer, self._producer):
                await self._close(client)
            if self._conn is not None:
                await self._conn.close(timeout=self._stop_timeout_seconds)
            logger.info("stopped %s", self.stats.summary())

    async def _close(self, client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
        """Stop a Kafka client, waiting a bounded time for a broker that is gone."""
        try:
            await asyncio.wait_for(client.stop(), self._stop_timeout_seconds)
        except (KafkaError, OSError, asyncio.CancelledError) as exc:
            # With the broker gone, aiokafka's fetcher can end its own close
            # with a cancellation; only a cancellation of this task goes on.
            if isinstance(exc, asyncio.CancelledError) and (
                asyncio.current_task().cancelling()
            ):
                raise
            logger.warning(
                "sink %s: %s not closed cleanly (%s)",
                self.spec.kind,
                type(client).__name__,
                type(exc).__name__,
            )

    async def _consume(self, stop: asyncio.Event) -> None:
        """Write batches until stopped, rewinding when unflushed ones are lost."""
        while True:
            try:
                await self._write_batches(stop)
            except Rewind:
                await self._rewind(stop)
                continue
            await self._flush_at_stop()
            return

    async def _write_batches(self, stop: asyncio.Event) -> None:
        """Write batches in order while the next ones are read and decoded.

        A reader task fetches, decodes and encodes up to ``READ_AHEAD`` batches
        ahead of the one being written, so that this process prepares a batch
        while PostgreSQL writes the previous one. Each batch's offsets are
        committed after its own transaction, in order; a batch read ahead is
        never committed before it is written.
        """
        ready: asyncio.Queue = asyncio.Queue(maxsize=READ_AHEAD)
        reader = asyncio.create_task(self._read(ready, stop))
        next_report = time.monotonic() + self.stats_interval_seconds
        try:
            while True:
                item = await self._next_batch(ready, stop)
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                try:
                    await self._handle(*item, stop)
                except Stopping:
                    logger.info(
                        "sink %s: stopped while retrying; uncommitted records "
                        "will be read again",
                        self.spec.kind,
                    )
                    return
                if time.monotonic() >= next_report:
                    logger.info("%s", self.stats.summary())
                    next_report = time.monotonic() + self.stats_interval_seconds
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _next_batch(self, ready: asyncio.Queue, stop: asyncio.Event) -> Any:
        """Return the next item of ``ready``; meanwhile settle flushed batches."""
        while self._unflushed and ready.empty():
            try:
                return await asyncio.wait_for(ready.get(), FLUSH_POLL_SECONDS)
            except TimeoutError:
                async with self._batch_lock:
                    await self._retrying(stop, "database", self._settle_flushed)
                    await self._retrying(
                        stop, "group coordinator", self._commit_pending
                    )
        return await ready.get()

    async def _read(self, ready: asyncio.Queue, stop: asyncio.Event) -> None:
        """Put decoded batches on ``ready`` until stopped, then None."""
        limit = self.settings.sink_batch_max_records
        try:
            while not stop.is_set():
                batch, ends, began = await self._collect(stop)
                if batch:
                    rows, dead, ahead = await self._decode(batch)
                    # Closed by the record limit: more records are waiting.
                    backlog = len(batch) >= limit
                    await ready.put((batch, ends, began, rows, dead, ahead, backlog))
        except Exception as exc:  # noqa: BLE001 - handed to the writing loop
            await ready.put(exc)
            return
        await ready.put(None)

    async def _collect(
        self, stop: asyncio.Event
    ) -> tuple[list[ConsumerRecord], dict[TopicPartition, int], float]:
        """Return the next batch, its next offset per partition, when it began.

        The batch is empty when nothing arrived within the wait; otherwise it
        closes at the record limit or the wait after its first records.
        """
        limit = self.settings.sink_batch_max_records
        wait = self.settings.sink_batch_max_wait_ms / 1000
        batch: list[ConsumerRecord] = []
        ends: dict[TopicPartition, int] = {}
        began = time.monotonic()
        deadline = began + wait
        while len(batch) < limit and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 and batch:
                break
            fetched = await self._consumer.getmany(
                timeout_ms=max(int(remaining * 1000), 0),
                max_records=min(limit - len(batch), FETCH_STEP_RECORDS),
            )
            # Records already fetched come back without a wait: yield anyway,
            # so that the batch being written hears from PostgreSQL promptly.
            await asyncio.sleep(0)
            if fetched and not batch:
                began = time.monotonic()
                deadline = began + wait
            for tp, records in fetched.items():
                batch.extend(records)
                ends[tp] = records[-1].offset + 1
            if not batch:
                break
        return batch, ends, began

    async def _handle(
        self,
        batch: list[ConsumerRecord],
        ends: dict[TopicPartition, int],
        began: float,
        rows: pl.DataFrame,
        dead: list[tuple[ConsumerRecord, str]],
        ahead: dict[str, Encoded],
        backlog: bool,
        stop: asyncio.Event,
    ) -> None:
        # Held for the whole batch, so a revocation waits for its commit.
        async with self._batch_lock:
            # With async commits the session does not wait for the flush; a
            # batch that closed on the wait does, so that its offsets follow.
            asynchronous = self.settings.sink_async_commit
            wait_flush = True if asynchronous and not backlog else None
            changed, rejected, wal = await self._retrying(
                stop, "database", self._write, rows, wait_flush, ahead
            )
            dead.extend((batch[r.index], r.reason) for r in rejected)
            if self.after_db_commit is not None:
                await self.after_db_commit()
            if dead:
                await self._retrying(stop, "dead-letter topic", self._send_dead, dead)

            if wal is None:
                # Every commit of this sink waits for its flush.
                self._pending.update(ends)
            else:
                inserted, flushed = wal
                self._unflushed.append((inserted, ends))
                if wait_flush and any(changed.values()):
                    # A commit that wrote WAL and waited for its flush covers
                    # every earlier one. The insert position read after it can
                    # still lie beyond the flush: past the header of a new WAL
                    # page, or past other sessions' records.
                    flushed = max(flushed, inserted)
                self._promote(flushed)
            await self._retrying(stop, "group coordinator", self._commit_pending)
            self.stats.observe_batch(len(batch), changed, len(dead), began)

    async def _decode(
        self, batch: list[ConsumerRecord]
    ) -> tuple[pl.DataFrame, list[tuple[ConsumerRecord, str]], dict[str, Encoded]]:
        """Return the batch's rows (``INDEX`` names each row's record), the
        records that could not be decoded, with the reason, and the rows'
        COPY data made ahead.

        Decoded and encoded in a worker thread: polars and pgpq work without
        holding the GIL, so the event loop keeps serving the batch being
        written meanwhile, and the write only sends the data.
        """
        rows, failed, ahead = await asyncio.to_thread(
            self._prepare, [record.value for record in batch]
        )
        dead = [(batch[i], reason) for i, reason in failed]
        return rows, dead, ahead

    def _prepare(
        self, values: list[bytes]
    ) -> tuple[pl.DataFrame, list[tuple[int, str]], dict[str, Encoded]]:
        decoded = self._decoder.decode(values)
        rows = decoded.frame.select(self._projection)
        return rows, decoded.failed, self._writer.encode_ahead(rows)

    async def _database_ready(self, stop: asyncio.Event) -> bool:
        """Connect and check the tables; False when stopped before it succeeded."""
        delay = self.initial_backoff_seconds
        while True:
            try:
                await self._connection()
                return True
            except (*TRANSIENT, ValueError, ConfigError) as exc:
                config_error = permanent_error(exc)
                if config_error is not None:
                    raise config_error from exc
                self.stats.retries += 1
                logger.warning(
                    "sink %s: database unavailable at start (%s: %s); retry in %.1f s",
                    self.spec.kind,
                    type(exc).__name__,
                    one_line(str(exc)),
                    delay,
                )
            if await sleep_or_stop(stop, delay):
                return False
            delay = min(delay * 2, self.max_backoff_seconds)

    async def _retrying(
        self,
        stop: asyncio.Event,
        service: str,
        operation: Callable[..., Awaitable[T]],
        *args: Any,
    ) -> T:
        """Run ``operation`` until it succeeds, pausing consumption between tries."""
        delay = self.initial_backoff_seconds
        failures = 0
        while True:
            try:
                result = await operation(*args)
            except (*TRANSIENT, ConfigError) as exc:
                config_error = permanent_error(exc, starting=False)
                if config_error is not None:
                    raise config_error from exc
                failures += 1
                self.stats.retries += 1
                logger.warning(
                    "sink %s: %s unavailable (%s: %s); batch not committed, "
                    "retry %d in %.1f s",
                    self.spec.kind,
                    service,
                    type(exc).__name__,
                    one_line(str(exc)),
                    failures,
                    delay,
                )
                await self._wait_paused(delay, stop)
                delay = min(delay * 2, self.max_backoff_seconds)
                continue
            if failures:
                self._consumer.resume(*self._consumer.assignment())
                logger.info(
                    "sink %s: %s available again after %d retries",
                    self.spec.kind,
                    service,
                    failures,
                )
            return result

    async def _wait_paused(self, seconds: float, stop: asyncio.Event) -> None:
        """Wait with every partition paused, still polling to stay in the group."""
        consumer = self._consumer
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            consumer.pause(*consumer.assignment())
            fetched = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for tp, records in fetched.items():
                # Partitions assigned during the wait start unpaused; rewind what
                # they delivered so that it is read again after the retry.
                consumer.seek(tp, records[0].offset)
        raise Stopping

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            # The session that wrote them is gone, perhaps with its server.
            self._check_unflushed()
            conn = await asyncpg.connect(
                self.settings.database_url,
                command_timeout=DB_COMMAND_TIMEOUT_SECONDS,
                server_settings={
                    "timezone": "UTC",
                    "application_name": f"fleetstream-sink-{self.spec.kind}",
                    **(
                        {"synchronous_commit": "off"}
                        if self.settings.sink_async_commit
                        else {}
                    ),
                },
            )
            try:
                await self._writer.prepare(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _write(
        self,
        rows: pl.DataFrame,
        wait_flush: bool | None = None,
        ahead: dict[str, Encoded] | None = None,
    ) -> tuple[dict[str, int], list, tuple[int, int] | None]:
        """Write ``rows``; return rows changed per table, rejected rows, and,
        with async commits, the WAL's insert and flush positions after the commit.

        The positions are read even after a synchronous commit: one that wrote
        no WAL (every row already stored) flushes nothing.

        Raises ``Rewind`` instead of the failure when earlier batches still
        await their flush: the server may have lost them.
        """
        conn = await self._connection()
        try:
            changed, rejected = {}, []
            if rows.height:
                changed, rejected = await self._writer.write(
                    conn, rows, wait_flush=wait_flush, ahead=ahead
                )
            if not self.settings.sink_async_commit:
                return changed, rejected, None
            inserted, flushed = await conn.fetchrow(WAL_POSITIONS)
            return changed, rejected, (inserted, flushed)
        except BaseException as exc:
            self._drop(conn, exc)
            raise

    def _drop(self, conn: asyncpg.Connection, exc: BaseException) -> None:
        """Forget a session whose state is unknown after ``exc``: start afresh.

        Raises ``Rewind`` when batches awaiting their flush went with it,
        unless ``exc`` is a cancellation, which must end the sink.
        """
        self._conn = None
        conn.terminate()
        if isinstance(exc, Exception):
            self._check_unflushed()

    def _check_unflushed(self) -> None:
        if self._unflushed:
            lost = len(self._unflushed)
            self._unflushed.clear()
            raise Rewind(f"{lost} batches awaited their WAL flush")

    def _promote(self, flushed: int) -> None:
        """Make the batches whose WAL is flushed up to ``flushed`` pending."""
        while self._unflushed and self._unflushed[0][0] <= flushed:
            self._pending.update(self._unflushed.pop(0)[1])

    async def _settle_flushed(self) -> None:
        conn = await self._connection()
        try:
            flushed = await conn.fetchval(WAL_FLUSHED)
        except BaseException as exc:
            self._drop(conn, exc)
            raise
        self._promote(flushed)

    async def _rewind(self, stop: asyncio.Event) -> None:
        """Read again every record whose offsets are not committed.

        Batches written without waiting for their flush may be gone with the
        server that lost the connection. Whatever was flushed is committed
        first; each assigned partition then goes back to its committed offset
        (its first record without one).
        """
        self.stats.rewinds += 1
        async with self._batch_lock:
            await self._retrying(stop, "group coordinator", self._commit_pending)
            consumer = self._consumer
            assigned = set(consumer.assignment())
            for tp in assigned:
                offset = await self._retrying(
                    stop, "group coordinator", consumer.committed, tp
                )
                if tp not in consumer.assignment():
                    # Revoked meanwhile (a revocation waits for this lock only
                    # so long): its next owner reads from the committed offset.
                    continue
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
        logger.warning(
            "sink %s: database connection lost while batches awaited their WAL "
            "flush; partitions %s rewound to their committed offsets",
            self.spec.kind,
            sorted(tp.partition for tp in assigned),
        )

    async def _flush_at_stop(self) -> None:
        """Commit the offsets of the last batches once their WAL is flushed."""
        deadline = time.monotonic() + FLUSH_WAIT_AT_STOP_SECONDS
        async with self._batch_lock:
            try:
                while self._unflushed and time.monotonic() < deadline:
                    await self._settle_flushed()
                    if self._unflushed:
                        await asyncio.sleep(FLUSH_POLL_SECONDS)
                await asyncio.wait_for(
                    self._commit_pending(), self._stop_timeout_seconds
                )
            except (*TRANSIENT, Rewind) as exc:
                logger.info(
                    "sink %s: last offsets not committed at stop (%s); their "
                    "records will be rewritten, without duplicates",
                    self.spec.kind,
                    type(exc).__name__,
                )

    async def _send_dead(self, dead: list[tuple[ConsumerRecord, str]]) -> None:
        failed_at = datetime.now(UTC)
        sent = []
        for record, reason in dead:
            value = self._dead_codec.encode(
                {
                    "stage": "sink",
                    "reason": reason[:REASON_MAX_CHARS],
                    "origin_topic": record.topic,
                    "origin_partition": record.partition,
                    "origin_offset": record.offset,
                    "key": record.key,
                    "value": record.value,
                    "failed_at": failed_at,
                }
            )
            sent.append(
                await self._producer.send(self.dead_letter_topic, value, key=record.key)
            )
        await asyncio.gather(*sent)
        record, reason = dead[0]
        logger.warning(
            "sink %s: sent %d records to %s, the first from partition %d offset %d: %s",
            self.spec.kind,
            len(dead),
            self.dead_letter_topic,
            record.partition,
            record.offset,
            reason[:200],
        )

    async def _commit_pending(self) -> None:
        assignment = self._consumer.assignment()
        for tp in [tp for tp in self._pending if tp not in assignment]:
            del self._pending[tp]
        offsets = dict(self._pending)
        if not offsets:
            return
        try:
            # aiokafka waits for a group coordinator without end; a broker that
            # is gone must become an error that the retry loop (or a stop) sees.
            await asyncio.wait_for(
                self._consumer.commit(offsets), self._request_timeout_seconds
            )
        except (CommitFailedError, IllegalStateError) as exc:
            logger.warning(
                "sink %s: offsets of partitions %s not committed (%s); their "
                "records will be read and rewritten again, without duplicates",
                self.spec.kind,
                sorted(tp.partition for tp in offsets),
                type(exc).__name__,
            )
            return
        for tp, offset in offsets.items():
            if self._pending.get(tp) == offset:
                del self._pending[tp]

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Commit what is written of partitions being revoked, and forget them.

        Waits briefly for the batch in flight; offsets of a batch that is not in
        the database yet are never committed.
        """
        try:
            await asyncio.wait_for(self._batch_lock.acquire(), self.revoke_wait_seconds)
        except TimeoutError:
            logger.warning(
                "sink %s: batch still in flight at revocation; its records will be "
                "rewritten by the next owner of the partitions",
                self.spec.kind,
            )
            held = False
        else:
            held = True
        try:
            conn = self._conn
            if held and self._unflushed and conn is not None and not conn.is_closed():
                with contextlib.suppress(*TRANSIENT):
                    self._promote(await conn.fetchval(WAL_FLUSHED))
            if self._unflushed:
                # The next owner rewrites what is still unflushed.
                for _, ends in self._unflushed:
                    for tp in revoked:
                        ends.pop(tp, None)
            offsets = {tp: o for tp, o in self._pending.items() if tp in revoked}
            if offsets:
                try:
                    await self._consumer.commit(offsets)
                except KafkaError as exc:
                    logger.warning(
                        "sink %s: offsets of revoked partitions not committed (%s); "
                        "the next owner rewrites their last records",
                        self.spec.kind,
                        type(exc).__name__,
                    )
            for tp in revoked:
                self._pending.pop(tp, None)
        finally:
            if held:
                self._batch_lock.release()

"""Measure the position sink against a raw COPY of the same rows.

    python -m bench.bench_sink [ROWS] [--devices N] [--batch N] [--rounds N]
                               [--figures PATH]

Both figures come from the same run, the same database and the same table,
``tracksolid.position_history``. Each round first times one asyncpg
``copy_records_to_table`` of every row (the fastest way into PostgreSQL from
Python values), then, on the emptied table, a new consumer group's sink reading
the same rows as Avro records from the clean topic, writing history and live
positions and committing offsets. The sink's time runs from its first batch to
its last offset commit, so the group join is left out. The headline is the
median round's ratio: on a shared machine one busy moment skews one round.
A last group then replays the topic over the stored rows, which measures the
path where every key already exists.

Then one and two sink processes in one consumer group read the topic
(``topic_partitions`` partitions) into the emptied tables. Each process joins
the group with its partitions paused and starts only once the group holds every
partition, so the figure is the group's steady rate: rows over the time from
the first batch of any member to the last offset commit of all.

The sink's own time is split into phases (fetch, decode, each table's write,
the rest of the transaction, the offset commit) and printed under its line.
Fetching and decoding run while the previous batch is written, so the phases
overlap and add up to more than the elapsed time. Two decoding figures show
what the sink's batch decoder (``sinks.columnar``) gains over fastavro reading
one record at a time.

Uses ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` when set (a database is
created there and dropped at the end); otherwise starts the embedded broker and
PostgreSQL in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.figures import Figure, write_figures
from fleetstream.codec import codec
from fleetstream.db import with_database
from fleetstream.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.settings import Settings
from fleetstream.topics import CLEAN, DEADLETTER_TOPIC, spec
from sinks.columnar import FrameDecoder
from sinks.kinds import POSITION
from sinks.sink import Sink

START = datetime(2026, 3, 2, tzinfo=UTC)
TARGET_RATIO = 0.6
GROUP_START_TIMEOUT_SECONDS = 120.0


def positions(count: int, devices: int) -> list[dict]:
    """Return ``count`` fixes spread over ``devices`` devices, 10 s apart each."""
    fixes = []
    for i in range(count):
        device, step = divmod(i, max(count // devices, 1))
        moment = START + timedelta(seconds=10 * step)
        fixes.append(
            {
                "imei": f"86{device:013d}",
                "gps_time": moment,
                "lat": -1.3 + step * 1e-5,
                "lng": 36.8 + device * 1e-4,
                "speed_kmh": float(step % 90),
                "direction_deg": step % 360,
                "acc_on": True,
                "pos_type": "GPS",
                "satellites": 10,
                "altitude_m": 1650.0,
                "reupload": False,
                "odometer_m": 10.0 * step,
                "source": "poll",
                "origin": "jimi.device.track.list",
                "received_at": moment + timedelta(seconds=20),
            }
        )
    return fixes


@asynccontextmanager
async def services():
    """Yield ``(bootstrap_servers, broker_profile, server_url)``."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    url = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as scratch:
        broker = pg = None
        if not servers:
            broker = EmbeddedBroker(free_port(), Path(scratch) / "tansu.log").start()
            servers = broker.bootstrap_servers
        if not url:
            pg = EmbeddedPostgres(Path(scratch) / "pg", free_port()).start()
            url = pg.url
        profile = (
            "embedded"
            if broker
            else os.environ.get("FLEETSTREAM_BROKER_PROFILE", "kafka")
        )
        try:
            yield servers, profile, url
        finally:
            if pg:
                pg.stop()
            if broker:
                broker.stop()


@asynccontextmanager
async def scratch_database(server_url: str):
    """Yield the URL of a new migrated database, dropped afterwards."""
    from migrations.runner import migrate

    name = f"bench_sink_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(server_url, name)
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def raw_copy_seconds(url: str, rows: list[tuple]) -> float:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "position_history",
            schema_name="tracksolid",
            records=rows,
            columns=POSITION.columns,
        )
        elapsed = time.perf_counter() - started
        await conn.execute("TRUNCATE tracksolid.position_history")
        return elapsed
    finally:
        await conn.close()


async def publish(settings: Settings, fixes: list[dict]) -> list[bytes]:
    """Write the fixes to the clean topic; return their encoded values."""
    await ensure_topics(settings, (spec(CLEAN, "position"), DEADLETTER_TOPIC))
    encoder = codec("Position")
    values = [encoder.encode(fix) for fix in fixes]
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        topic = settings.topic(CLEAN, "position")
        for fix, value in zip(fixes, values, strict=True):
            await producer.send(topic, value, key=fix["imei"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    return values


def decode_seconds(values: list[bytes], decode) -> float:
    """Return the time ``decode`` alone takes to decode every value once."""
    started = time.perf_counter()
    for value in values:
        decode(value)
    return time.perf_counter() - started


class TimedSink(Sink):
    """A sink that adds up the wall time of each phase of its batches.

    ``phases`` maps a phase to seconds: collecting a batch from the consumer
    (every batch but the first, whose wait holds the group join), decoding,
    each table's write, the rest of the database transaction (begin, commit)
    and the offset commit. The writer's per-table
    plans are private to ``sinks.writer``; they are wrapped here only to time
    them.
    """

    def __init__(self, settings: Settings, group_id: str | None = None) -> None:
        super().__init__(
            settings, POSITION, stats_interval_seconds=3600, group_id=group_id
        )
        self.phases: dict[str, float] = {}
        for plan in self._writer._plans:
            plan.write = self._timed(plan.write, f"write {plan.target.table}")

    def _add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def _timed(self, operation, phase: str):
        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await operation(*args, **kwargs)
            finally:
                self._add(phase, time.perf_counter() - started)

        return timed

    async def _collect(self, stop: asyncio.Event):
        started = time.perf_counter()
        batch, ends, began = await super()._collect(stop)
        # The first batch's wait includes the group join, which is not timed.
        if batch and self.stats.batches:
            self._add("fetch from the broker", time.perf_counter() - started)
        return batch, ends, began

    async def _decode(self, batch):
        # Encoding the COPY data ahead is part of this phase.
        started = time.perf_counter()
        try:
            return await super()._decode(batch)
        finally:
            self._add("decode", time.perf_counter() - started)

    async def _write(self, rows, wait_flush=None, ahead=None):
        started = time.perf_counter()
        tables_before = self._tables_seconds()
        try:
            return await super()._write(rows, wait_flush, ahead)
        finally:
            took = time.perf_counter() - started
            tables = self._tables_seconds() - tables_before
            self._add("transaction (begin, commit)", took - tables)

    def _tables_seconds(self) -> float:
        return sum(v for k, v in self.phases.items() if k.startswith("write "))

    async def _commit_pending(self) -> None:
        started = time.perf_counter()
        try:
            await super()._commit_pending()
        finally:
            self._add("offset commit", time.perf_counter() - started)


def print_phases(sink: TimedSink) -> None:
    """Print each phase's time as a share of the sink's elapsed time.

    The reading phases overlap the writing ones, so the shares add up to more
    than 100 %.
    """
    total = elapsed(sink)
    for phase, seconds in sorted(sink.phases.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:<40}{seconds:8.3f} s  {100 * seconds / total:5.1f} %")


async def run_sink(settings: Settings, expected: int, group_id=None) -> TimedSink:
    sink = TimedSink(settings, group_id)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        while sink.stats.records < expected:
            if task.done():
                await task
                raise RuntimeError("the sink stopped before writing every row")
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    return sink


class GatedSink(Sink):
    """A sink that holds its partitions paused until ``go`` is set.

    It reports how many partitions it holds in ``held`` and how many records it
    has written in ``written``, so that the parent process can start every
    member of the group at once and stop them when the topic is written.
    """

    def __init__(self, settings: Settings, group_id: str, held, written, go):
        super().__init__(
            settings, POSITION, stats_interval_seconds=3600, group_id=group_id
        )
        self._held, self._written, self._go = held, written, go

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        while not self._go.is_set() and not stop.is_set():
            consumer.pause(*consumer.assignment())
            fetched = await consumer.getmany(timeout_ms=50)
            for tp, records in fetched.items():
                # Assigned since the last pause and so not paused: read it later.
                consumer.seek(tp, records[0].offset)
            self._held.value = len(consumer.assignment())
        consumer.resume(*consumer.assignment())
        report = asyncio.create_task(self._report(stop))
        try:
            await super()._consume(stop)
        finally:
            report.cancel()

    async def _report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._written.value = self.stats.records
            await asyncio.sleep(0.02)


def group_member(options: dict, group_id: str, held, written, go, done, out) -> None:
    """Run one ``GatedSink`` in this process until ``done``; put its timings."""

    async def member() -> None:
        sink = GatedSink(Settings(**options), group_id, held, written, go)
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        while not done.is_set() and not task.done():
            await asyncio.sleep(0.02)
        stop.set()
        await task
        written.value = sink.stats.records
        out.put((sink.stats.first_batch_at, sink.stats.last_commit_at))

    asyncio.run(member())


async def group_rate(settings: Settings, processes: int, rows: int) -> float:
    """Return rows/s of ``processes`` sink processes in one group, tables emptied.

    Timings from different processes are comparable because ``time.monotonic``
    reads the machine's one monotonic clock on Linux.
    """
    await empty_tables(settings.database_url)
    spawn = multiprocessing.get_context("spawn")
    go, done, out = spawn.Event(), spawn.Event(), spawn.Queue()
    held = [spawn.Value("i", 0) for _ in range(processes)]
    written = [spawn.Value("q", 0) for _ in range(processes)]
    group_id = f"{settings.topic_prefix}.group{processes}"
    options = settings.model_dump()
    members = [
        spawn.Process(
            target=group_member,
            args=(options, group_id, held[n], written[n], go, done, out),
        )
        for n in range(processes)
    ]
    for member in members:
        member.start()
    try:
        deadline = time.monotonic() + GROUP_START_TIMEOUT_SECONDS
        partitions = settings.topic_partitions
        while not (
            all(h.value for h in held) and sum(h.value for h in held) == partitions
        ):
            if time.monotonic() > deadline or not all(m.is_alive() for m in members):
                raise RuntimeError(f"{processes} sinks did not share the partitions")
            await asyncio.sleep(0.05)
        go.set()
        while sum(w.value for w in written) < rows:
            if not all(m.is_alive() for m in members):
                raise RuntimeError("a sink process ended before the topic was written")
            await asyncio.sleep(0.02)
    finally:
        done.set()
        timings = [await asyncio.to_thread(out.get, True, 60) for _ in members]
        for member in members:
            member.join(30)
    if sum(w.value for w in written) != rows:
        raise RuntimeError(f"{processes} sinks wrote {[w.value for w in written]}")
    share = ", ".join(str(w.value) for w in written)
    seconds = max(t[1] for t in timings) - min(t[0] for t in timings)
    print(
        f"sink x{processes} in one group {seconds:8.3f} s  {rows / seconds:10.0f} "
        f"rows/s (rows per process: {share})"
    )
    return rows / seconds


async def empty_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "TRUNCATE tracksolid.position_history, tracksolid.live_positions"
        )
    finally:
        await conn.close()


async def bench(rows: int, devices: int, batch: int, rounds: int) -> list[Figure]:
    fixes = positions(rows, devices)
    async with AsyncExitStack() as stack:
        servers, profile, server_url = await stack.enter_async_context(services())
        url = await stack.enter_async_context(scratch_database(server_url))
        settings = Settings(
            environment="test",
            kafka_bootstrap_servers=servers,
            broker_profile=profile,
            database_url=url,
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
            sink_batch_max_records=batch,
        )
        values = await publish(settings, fixes)
        decode_s = decode_seconds(values, codec("Position").decode)
        batch_decode_s = batch_decode_seconds(values, batch)
        rows_in = [tuple(fix[c] for c in POSITION.columns) for fix in fixes]
        del fixes, values
        # A sink process holds no such heap of test data; frozen, it is left
        # out of the garbage collections of the sink's run.
        gc.collect()
        gc.freeze()

        # Each round times the raw COPY and then a new group's sink on the
        # emptied tables, so that a busy moment of the machine skews one round
        # of both rather than one side of the ratio.
        measured: list[tuple[float, float, TimedSink]] = []
        for n in range(rounds):
            if n:
                await empty_tables(url)
            copy_s = await raw_copy_seconds(url, rows_in)
            sink = await run_sink(settings, rows, f"{settings.topic_prefix}.r{n}")
            history = sink.stats.rows_by_table["tracksolid.position_history"]
            if history != rows:
                raise RuntimeError(f"the sink wrote {history} history rows, not {rows}")
            ratio = copy_s / elapsed(sink)
            measured.append((ratio, copy_s, sink))
            print(
                f"round {n + 1}: raw COPY {rows / copy_s:10.0f} rows/s, sink "
                f"{rows / elapsed(sink):10.0f} rows/s, ratio {ratio:.2f}"
            )
        del rows_in
        gc.unfreeze()
        replay = await run_sink(settings, rows, f"{settings.topic_prefix}.replay")
        if replay.stats.rows_written:
            raise RuntimeError(
                f"the replay changed {replay.stats.rows_written} rows, expected none"
            )
        one = await group_rate(settings, 1, rows)
        two = await group_rate(settings, 2, rows)

    ratio, copy_s, sink = sorted(measured, key=lambda m: m[0])[len(measured) // 2]
    print(f"rows                 {rows} ({devices} devices, batches of {batch})")
    print(f"median round of {rounds}:")
    print(f"raw COPY             {copy_s:8.3f} s  {rows / copy_s:10.0f} rows/s")
    print(
        f"fastavro decode      {decode_s:8.3f} s  {rows / decode_s:10.0f} rows/s  "
        "(one record at a time)"
    )
    print(
        f"sink's batch decode  {batch_decode_s:8.3f} s  "
        f"{rows / batch_decode_s:10.0f} rows/s  (sinks.columnar)"
    )
    print(f"sink                 {report(sink, rows)}")
    print_phases(sink)
    print(f"sink replay          {report(replay, rows)}  (every row already stored)")
    print_phases(replay)
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    print(f"ratio sink/COPY      {ratio:8.2f}  ({verdict} the {TARGET_RATIO} target)")
    print(f"two processes / one  {two / one:8.2f}")
    return [
        Figure(
            "sink / raw COPY (median round)",
            "rows/s",
            rows / elapsed(sink),
            rows / copy_s,
            minimum=TARGET_RATIO,
        ),
        Figure(
            "sink's batch decode / fastavro one by one",
            "rows/s",
            rows / batch_decode_s,
            rows / decode_s,
        ),
        Figure(
            "sink replay / raw COPY", "rows/s", rows / elapsed(replay), rows / copy_s
        ),
        Figure("2 sink processes / 1 (one group)", "rows/s", two, one),
    ]


def batch_decode_seconds(values: list[bytes], batch: int) -> float:
    """Return the time the sink's decoder takes over ``values`` in batches."""
    decoder = FrameDecoder(codec("Position"), POSITION.source_fields())
    started = time.perf_counter()
    for first in range(0, len(values), batch):
        decoder.decode(values[first : first + batch])
    return time.perf_counter() - started


def elapsed(sink: Sink) -> float:
    """Return the seconds from the sink's first batch to its last offset commit."""
    return sink.stats.last_commit_at - sink.stats.first_batch_at


def report(sink: Sink, rows: int) -> str:
    stats = sink.stats
    seconds = elapsed(sink)
    return (
        f"{seconds:8.3f} s  {rows / seconds:10.0f} rows/s ({stats.batches} batches, "
        f"mean {stats.batch_seconds_mean * 1000:.0f} ms, "
        f"max {stats.batch_seconds_max * 1000:.0f} ms)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sink")
    parser.add_argument("rows", nargs="?", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument(
        "--batch",
        type=int,
        default=Settings.model_fields["sink_batch_max_records"].default,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--figures", help="also write the headline figures here")
    args = parser.parse_args(argv)
    figures = asyncio.run(bench(args.rows, args.devices, args.batch, args.rounds))
    write_figures(args.figures, figures)


if __name__ == "__main__":
    main()

"""Sinks against the real broker and a real migrated PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import polars as pl
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from fleetstream.codec import codec
from fleetstream.db import database_name, with_database
from fleetstream.errors import ConfigError
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.topics import ALL_TOPICS, CLEAN, DEADLETTER_TOPIC, spec
from sinks.kinds import DEVICE, POSITION, SINKS
from sinks.runner import run_sinks
from sinks.sink import Sink, permanent_error
from sinks.writer import BatchWriter

BASE = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
IMEIS = ("860000000000011", "860000000000022", "860000000000033")


def position(imei: str, minute: float, **overrides) -> dict:
    fix = {
        "imei": imei,
        "gps_time": BASE + timedelta(minutes=minute),
        "lat": -1.28 + minute / 1000,
        "lng": 36.82 + minute / 1000,
        "speed_kmh": 30.0 + minute,
        "direction_deg": int(minute) % 360,
        "acc_on": True,
        "pos_type": "GPS",
        "satellites": 9,
        "altitude_m": 1650.0,
        "reupload": False,
        "odometer_m": 1000.0 * minute,
        "source": "poll",
        "origin": "jimi.device.track.list",
        "received_at": BASE + timedelta(minutes=minute, seconds=30),
    }
    fix.update(overrides)
    return fix


def device(imei: str, received_minute: float, **overrides) -> dict:
    row = {
        "imei": imei,
        "device_name": f"tracker {imei[-2:]}",
        "vehicle_number": "KDA 123A",
        "vehicle_number_norm": "KDA123A",
        "vehicle_name": "Truck",
        "vehicle_model": "Isuzu FRR",
        "vehicle_icon": "truck",
        "device_model": "JC400",
        "sim": "254700000000",
        "vin": "JALFRR90000000001",
        "driver_name": "Achieng",
        "driver_phone": "254711000000",
        "device_group": "Nairobi",
        "enabled": True,
        "expires_at": BASE + timedelta(days=365),
        "activated_at": BASE - timedelta(days=30),
        "account": "fleet-main",
        "source": "poll",
        "received_at": BASE + timedelta(minutes=received_minute),
    }
    row.update(overrides)
    return row


async def produce(settings, kind: str, records: list[dict | bytes]) -> None:
    """Write records (dicts are encoded, bytes sent as they are) to a clean topic."""
    await ensure_topics(settings, (spec(CLEAN, kind), DEADLETTER_TOPIC))
    encoder = codec(spec(CLEAN, kind).schema)
    producer = make_producer(settings)
    await producer.start()
    try:
        for record in records:
            value = record if isinstance(record, bytes) else encoder.encode(record)
            key = IMEIS[0] if isinstance(record, bytes) else record["imei"]
            await producer.send(settings.topic(CLEAN, kind), value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(sink: Sink):
    """Run ``sink`` as a task; on exit set its stop event and wait for it."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def fetch(settings, sql: str, *args) -> list[tuple]:
    conn = await asyncpg.connect(
        settings.database_url, server_settings={"timezone": "UTC"}
    )
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def as_row(record: dict) -> tuple:
    return tuple(record[column] for column in POSITION.columns)


HISTORY = f"SELECT {', '.join(POSITION.columns)} FROM tracksolid.position_history "
LIVE = f"SELECT {', '.join(POSITION.columns)} FROM tracksolid.live_positions "


async def history(settings) -> list[tuple]:
    return await fetch(settings, HISTORY + "ORDER BY imei, gps_time")


async def live(settings) -> list[tuple]:
    return await fetch(settings, LIVE + "ORDER BY imei")


def fast(settings, sink, **kw) -> Sink:
    return Sink(
        settings,
        sink,
        initial_backoff_seconds=0.1,
        max_backoff_seconds=0.5,
        stats_interval_seconds=1.0,
        **kw,
    )


async def test_every_declared_sink_matches_its_topic_and_tables(settings):
    clean_kinds = {topic.kind for topic in ALL_TOPICS if topic.layer == CLEAN}
    conn = await asyncpg.connect(settings.database_url)
    try:
        for sink in SINKS:
            assert sink.kind in clean_kinds
            codec(sink.schema)
            await BatchWriter(sink).prepare(conn)
    finally:
        await conn.close()


async def test_batch_writes_exact_rows_and_absorbs_duplicates(settings):
    first = [position(imei, m) for imei in IMEIS for m in (1, 2, 3)]
    second = [position(IMEIS[0], 4), position(IMEIS[1], 0.5)]
    sink = fast(settings, POSITION)

    # Duplicates inside the first batch and, in the second, of rows already stored.
    await produce(settings, "position", first + first[:4])
    async with running(sink):
        await until(lambda: sink.stats.records == 13, what="first batch")
        assert await history(settings) == sorted(as_row(r) for r in first)
        await produce(settings, "position", second + first[3:])
        await until(lambda: sink.stats.records == 13 + 8, what="second batch")

    expected = sorted(as_row(r) for r in first + second)
    assert await history(settings) == expected
    newest = {}
    for fix in first + second:
        if fix["gps_time"] > newest.get(fix["imei"], {"gps_time": BASE})["gps_time"]:
            newest[fix["imei"]] = fix
    assert await live(settings) == sorted(as_row(r) for r in newest.values())
    # 11 history rows plus the live rows that moved: 3 inserted, one moved to 4.
    assert sink.stats.rows_written == 11 + 3 + 1
    assert sink.stats.dead_letters == 0


async def test_replay_by_a_new_group_leaves_the_same_rows(settings):
    fixes = [position(imei, m) for imei in IMEIS for m in range(10)]
    await produce(settings, "position", fixes)
    sink = fast(settings, POSITION)
    async with running(sink):
        await until(lambda: sink.stats.records == len(fixes), what="first pass")
    before = (await history(settings), await live(settings))

    replay = fast(settings, POSITION, group_id=f"{settings.topic_prefix}.replay")
    async with running(replay):
        await until(lambda: replay.stats.records == len(fixes), what="replay")

    assert (await history(settings), await live(settings)) == before
    assert len(before[0]) == len(fixes)
    assert replay.stats.rows_written == 0


async def test_live_position_never_moves_backwards(settings):
    imei = IMEIS[0]
    sink = fast(settings, POSITION)
    await produce(settings, "position", [position(imei, 10)])
    async with running(sink):
        await until(lambda: sink.stats.records == 1, what="newest fix")
        # A late, buffered fix and a same-time fix with other values, next batch.
        late = position(imei, 5, reupload=True, source="backfill")
        same_time = position(imei, 10, lat=-1.5)
        await produce(settings, "position", [late, same_time])
        await until(lambda: sink.stats.records == 3, what="late fixes")

    assert await live(settings) == [as_row(position(imei, 10))]
    assert await history(settings) == [as_row(late), as_row(position(imei, 10))]


async def test_a_column_type_changed_while_the_sink_runs_is_written_as_the_new_type(
    settings,
):
    # Binary COPY carries no types: a double's 8 bytes would read as a bigint's,
    # and 8 bytes into a real are refused as a whole batch of bad rows.
    sink = fast(settings, POSITION)
    await produce(settings, "position", [position(IMEIS[0], 1)])
    async with running(sink):
        await until(lambda: sink.stats.records == 1, what="first fix")
        conn = await asyncpg.connect(settings.database_url)
        try:
            for table in ("position_history", "live_positions"):
                await conn.execute(
                    f"ALTER TABLE tracksolid.{table} "
                    "ALTER odometer_m TYPE bigint, ALTER altitude_m TYPE real"
                )
        finally:
            await conn.close()
        later = [position(imei, 2, odometer_m=1.0) for imei in IMEIS]
        await produce(settings, "position", later)
        await until(lambda: sink.stats.records == 4, what="fixes after the change")

    stored = await fetch(
        settings,
        "SELECT imei, odometer_m, altitude_m FROM tracksolid.position_history "
        "WHERE gps_time = $1 ORDER BY imei",
        later[0]["gps_time"],
    )
    assert stored == [(imei, 1, 1650.0) for imei in IMEIS]
    assert await fetch(
        settings, "SELECT DISTINCT odometer_m FROM tracksolid.live_positions"
    ) == [(1,)]
    assert sink.stats.dead_letters == 0
    assert sink.stats.retries >= 1


async def test_device_upsert_keeps_newest_and_operator_columns(settings):
    imei = IMEIS[1]
    await fetch(
        settings,
        "INSERT INTO tracksolid.devices (imei, cost_centre, city, updated_at) "
        "VALUES ($1, 'CC-7', 'Mombasa', $2)",
        imei,
        BASE - timedelta(days=1),
    )
    newer = device(imei, 20, driver_name="Wanjiru", vehicle_number="KDB 9Z")
    older = device(imei, 10, driver_name="Otieno")
    other = device(IMEIS[2], 1)
    sink = fast(settings, DEVICE)

    # Newest first inside one batch, so that order alone would pick the wrong one.
    await produce(settings, "device", [newer, older, other])
    async with running(sink):
        await until(lambda: sink.stats.records == 3, what="registry batch")
        await produce(settings, "device", [device(imei, 15, driver_name="Late")])
        await until(lambda: sink.stats.records == 4, what="late registry row")

    rows = await fetch(
        settings,
        "SELECT imei, driver_name, vehicle_number, vehicle_number_norm, cost_centre, "
        "city, updated_at FROM tracksolid.devices ORDER BY imei",
    )
    assert rows == [
        (imei, "Wanjiru", "KDB 9Z", "KDB9Z", "CC-7", "Mombasa", newer["received_at"]),
        (
            other["imei"],
            "Achieng",
            "KDA 123A",
            "KDA123A",
            None,
            None,
            other["received_at"],
        ),
    ]


CRASHING_SINK = """
import asyncio, json, os, signal, sys
from fleetstream.settings import Settings
from sinks.kinds import POSITION
from sinks.sink import Sink

async def die():
    os.kill(os.getpid(), signal.SIGKILL)

settings = Settings(**json.loads(sys.argv[1]))
asyncio.run(Sink(settings, POSITION, after_db_commit=die).run(asyncio.Event()))
"""


async def test_crash_between_db_commit_and_offset_commit_rewrites_nothing(settings):
    fixes = [position(imei, m) for imei in IMEIS for m in range(20)]
    await produce(settings, "position", fixes)
    overrides = {
        "environment": "test",
        "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
        "broker_profile": settings.broker_profile,
        "topic_prefix": settings.topic_prefix,
        "database_url": settings.database_url,
    }

    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHING_SINK, json.dumps(overrides)],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    written = await history(settings)
    assert written, "the crashing sink died before its first database commit"
    assert await committed(settings, POSITION.group_id(settings)) == {}

    restarted = fast(settings, POSITION)
    async with running(restarted):
        await until(lambda: restarted.stats.records == len(fixes), what="restart")

    assert await history(settings) == sorted(as_row(r) for r in fixes)
    # Everything was read again; what the dead sink had stored changed nothing.
    inserted = restarted.stats.rows_by_table["tracksolid.position_history"]
    assert inserted == len(fixes) - len(written)


async def committed(settings, group: str) -> dict[int, int]:
    # Partitions are named: tansu drops the connection when they are left out.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        topic = settings.topic(CLEAN, "position")
        partitions = [
            TopicPartition(topic, p) for p in range(settings.topic_partitions)
        ]
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0
    }


@contextlib.asynccontextmanager
async def database_closed(settings):
    """Refuse new connections to the test's database and end the open ones."""
    name = database_name(settings.database_url)
    admin = await asyncpg.connect(with_database(settings.database_url, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


@contextlib.asynccontextmanager
async def table_renamed(settings):
    """Take tracksolid.live_positions away while connections stay open."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("ALTER TABLE tracksolid.live_positions RENAME TO away")
        yield
    finally:
        await conn.execute("ALTER TABLE tracksolid.away RENAME TO live_positions")
        await conn.close()


@pytest.mark.parametrize("outage", [database_closed, table_renamed])
async def test_database_outage_pauses_and_resumes_without_loss(settings, outage):
    before = [position(imei, m) for imei in IMEIS for m in range(5)]
    during = [position(imei, m) for imei in IMEIS for m in range(5, 12)]
    sink = fast(settings, POSITION)
    group = POSITION.group_id(settings)

    await produce(settings, "position", before)
    async with running(sink) as task:
        await until(lambda: sink.stats.records == len(before), what="first rows")
        await until(
            lambda: committed_total(settings, group, len(before)), what="first commit"
        )
        async with outage(settings):
            await produce(settings, "position", during)
            # Longer than the session timeout: the paused consumer must keep its
            # membership, so the group never rebalances.
            outage_ends = (
                time.monotonic()
                + settings.kafka_tuning()["session_timeout_ms"] / 1000 * 1.5
            )
            await until(lambda: time.monotonic() > outage_ends, what="outage")
            assert sink.stats.retries >= 5
            assert sum((await committed(settings, group)).values()) == len(before)
            assert sink.stats.records == len(before)
            assert not task.done()
        await until(
            lambda: sink.stats.records == len(before) + len(during), what="resume"
        )
        await until(
            lambda: committed_total(settings, group, len(before) + len(during)),
            what="commit after the outage",
        )

    assert await history(settings) == sorted(as_row(r) for r in before + during)
    assert sink.stats.dead_letters == 0
    assert sink.stats.assignments == 1


async def committed_total(settings, group: str, expected: int) -> bool:
    return sum((await committed(settings, group)).values()) == expected


async def dead_letters(settings, count: int) -> list[dict]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        topic = DEADLETTER_TOPIC.name(settings)
        consumer.assign(
            [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        )
        found: list[dict] = []
        deadline = time.monotonic() + 20
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(codec("DeadLetter").decode(r.value) for r in records)
        return found
    finally:
        await consumer.stop()


async def test_rejected_and_undecodable_records_go_to_dead_letters(settings):
    good = [position(imei, m) for imei in IMEIS for m in range(30)]
    off_globe = position(IMEIS[0], 100, lat=95.0)
    garbage = b"\xc3\x01not avro at all"
    records = good[:40] + [off_globe] + good[40:] + [garbage]
    sink = fast(settings, POSITION)

    await produce(settings, "position", records)
    async with running(sink):
        await until(lambda: sink.stats.records == len(records), what="batch")

    assert await history(settings) == sorted(as_row(r) for r in good)
    # The rejected fix was the newest of its device; the newest good one is live.
    assert await live(settings) == [as_row(position(imei, 29)) for imei in IMEIS]
    assert sink.stats.dead_letters == 2
    letters = sorted(await dead_letters(settings, 2), key=lambda d: d["reason"])
    assert len(letters) == 2
    rejected, undecodable = letters
    assert rejected["stage"] == "sink"
    assert "CheckViolation" in rejected["reason"]
    assert rejected["origin_topic"] == settings.topic(CLEAN, "position")
    assert codec("Position").decode(rejected["value"]) == off_globe
    assert rejected["key"] == IMEIS[0].encode()
    assert undecodable["value"] == garbage
    assert undecodable["reason"].startswith("undecodable")
    offsets = {(d["origin_partition"], d["origin_offset"]) for d in letters}
    assert len(offsets) == 2


SAMPLE_BY_TYPE = {
    "string": "text",
    "int": 7,
    "long": 7,
    "double": 1.5,
    "boolean": True,
}
# Values the tables constrain or derive: JSON documents, a plate with its
# normalised form, the parking vocabulary, a real trip source (which the trips
# table names differently).
SAMPLE_OVERRIDES = {
    "imei": IMEIS[2],
    "vehicle_number": "KDA 123A",
    "vehicle_number_norm": "KDA123A",
    "source": "push",
    "detail": '{"raw": 1}',
    "extra": '{"odometerReading": 12}',
}
KIND_OVERRIDES = {"parking": {"kind": "idling"}, "trip": {"source": "derived"}}


def sample_value(avro_type):
    if isinstance(avro_type, list):
        return sample_value(next(t for t in avro_type if t != "null"))
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            return BASE
        if avro_type["type"] == "array":
            return []
        return sample_value(avro_type["type"])
    return SAMPLE_BY_TYPE[avro_type]


def sample(kind: str) -> dict:
    """Return a record of the kind's schema with a plausible value in every field."""
    schema = codec(spec(CLEAN, kind).schema).schema
    record = {f["name"]: sample_value(f["type"]) for f in schema["fields"]}
    record.update({k: v for k, v in SAMPLE_OVERRIDES.items() if k in record})
    record.update(KIND_OVERRIDES.get(kind, {}))
    return record


def row_of(sink, record: dict) -> tuple:
    """Return the row the sink's declaration makes of one record."""
    frame = pl.DataFrame([{f: record[f] for f in sink.source_fields()}])
    return frame.select(sink.projection()).row(0)


async def test_every_declared_kind_lands_in_its_tables(settings):
    records = {sink.kind: sample(sink.kind) for sink in SINKS}
    for kind, record in records.items():
        await produce(settings, kind, [record])
    stop = asyncio.Event()
    task = asyncio.create_task(run_sinks(settings, stop))

    async def stored(sink, target) -> list[tuple]:
        key = " AND ".join(f"{c} = ${i}" for i, c in enumerate(target.key, 1))
        row = row_of(sink, records[sink.kind])
        expected = dict(zip(sink.columns, row, strict=True))
        return await fetch(
            settings,
            f"SELECT {', '.join(sink.columns)} FROM {target.table} WHERE {key}",
            *(expected[c] for c in target.key),
        )

    try:
        for sink in SINKS:
            for target in sink.targets:
                found = functools.partial(stored, sink, target)
                await until(found, what=target.table)
                row = row_of(sink, records[sink.kind])
                assert await found() == [row], target.table
    finally:
        stop.set()
        running_sinks = await asyncio.wait_for(task, 30)
    assert {s.spec.kind: s.stats.records for s in running_sinks} == dict.fromkeys(
        records, 1
    )
    assert sum(s.stats.dead_letters for s in running_sinks) == 0


async def test_rebalance_to_a_second_member_loses_and_duplicates_nothing(settings):
    rounds = [
        [position(imei, r * 10 + m) for imei in IMEIS for m in range(10)]
        for r in range(3)
    ]
    first, second = fast(settings, POSITION), fast(settings, POSITION)
    group = POSITION.group_id(settings)
    total = sum(len(batch) for batch in rounds)

    async with running(first):
        await produce(settings, "position", rounds[0])
        await until(lambda: first.stats.records == len(rounds[0]), what="round 1")
        async with running(second):
            # Records keep arriving while the group moves partitions around.
            await produce(settings, "position", rounds[1])
            await until(lambda: second.stats.assignments == 1, what="second joins")
            await until(lambda: first.stats.assignments == 2, what="first rejoins")
            await produce(settings, "position", rounds[2])
            await until(
                lambda: committed_total(settings, group, total), what="all committed"
            )

    assert await history(settings) == sorted(as_row(r) for b in rounds for r in b)
    # Each record was handled by one member, except what a revocation cut short.
    assert total <= first.stats.records + second.stats.records
    assert (
        first.stats.rows_by_table["tracksolid.position_history"]
        + (second.stats.rows_by_table.get("tracksolid.position_history", 0))
        == total
    )


async def test_sink_command_writes_every_kind_and_stops_on_sigterm(settings):
    fixes = [position(imei, m) for imei in IMEIS for m in range(3)]
    await produce(settings, "position", fixes)
    await produce(settings, "device", [device(IMEIS[0], 1)])
    env = {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": settings.database_url,
    }
    stage = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "sink",
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await until(
            lambda: _count(settings, "tracksolid.position_history", len(fixes)),
            what="positions from the sink command",
        )
        await until(
            lambda: _count(settings, "tracksolid.devices", 1), what="device row"
        )
    finally:
        stage.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(stage.communicate(), 60)

    log = stderr.decode()
    assert stage.returncode == 0, log[-3000:]
    assert log.count("stopped sink ") == len(SINKS), log[-3000:]
    assert "stopped sink position: 9 records" in log


async def _count(settings, table: str, expected: int) -> bool:
    rows = await fetch(settings, f"SELECT count(*) FROM {table}")
    return rows[0][0] == expected


def _bad_urls(pg_server: str, empty_url: str) -> dict[str, tuple[str, str]]:
    """Return database URLs no retry can fix, with what the error must name."""
    host = pg_server.split("@", 1)[1].split("/", 1)[0]
    return {
        "scheme": ("mysql://x@127.0.0.1/y", "mysql"),
        "port": (f"postgresql://postgres@{host.split(':')[0]}:notaport/x", "notaport"),
        "role": (f"postgresql://no_such_role@{host}/postgres", "no_such_role"),
        "database": (with_database(pg_server, "fs_no_such_db"), "fs_no_such_db"),
        # Whichever of the two sinks looks first names its own table.
        "not migrated": (empty_url, "tracksolid."),
    }


async def test_permanent_database_errors_stop_the_sink_at_once(
    make_settings, pg_server, empty_database_url
):
    for case, (url, named) in _bad_urls(pg_server, empty_database_url).items():
        settings = make_settings(database_url=url)
        began = time.monotonic()
        with pytest.raises(ConfigError) as raised:
            await asyncio.wait_for(
                run_sinks(settings, asyncio.Event(), (POSITION, DEVICE)), 20
            )
        assert time.monotonic() - began < 10, case
        assert named in str(raised.value), (case, str(raised.value))
        assert raised.value.hint, case
        if case == "not migrated":
            assert "migrat" in raised.value.hint


async def test_transient_database_errors_are_retried_until_stopped(
    make_settings, caplog
):
    from fleetstream.embedded import free_port

    settings = make_settings(database_url=f"postgresql://x@127.0.0.1:{free_port()}/y")
    stop = asyncio.Event()
    task = asyncio.create_task(run_sinks(settings, stop, (POSITION,)))
    await asyncio.sleep(2.5)
    assert not task.done()
    retries = [
        r for r in caplog.records if "database unavailable at start" in r.message
    ]
    assert len(retries) >= 2  # backed off and tried again, still running
    stop.set()
    sinks = await asyncio.wait_for(task, 10)
    # Counted as retries, so that the metrics tell a sink stuck at start from
    # an idle one.
    assert sinks[0].stats.retries == len(retries)


@pytest.mark.parametrize(
    "error,permanent",
    [
        (ConnectionRefusedError(111, "refused"), False),
        (TimeoutError(), False),
        (asyncpg.CannotConnectNowError("the database system is starting up"), False),
        (asyncpg.AdminShutdownError("terminating connection"), False),
        (asyncpg.InvalidPasswordError("password authentication failed"), True),
        (asyncpg.InvalidCatalogNameError('database "y" does not exist'), True),
        (asyncpg.UndefinedTableError('relation "x" does not exist'), True),
    ],
)
def test_database_errors_are_told_apart(error, permanent):
    assert (permanent_error(error) is not None) is permanent


def test_a_running_sink_waits_for_missing_tables_but_not_for_bad_credentials():
    missing = asyncpg.UndefinedTableError('relation "x" does not exist')
    refused = asyncpg.InvalidPasswordError("password authentication failed")
    assert permanent_error(missing, starting=False) is None
    assert permanent_error(refused, starting=False) is not None


async def test_sink_command_exits_with_one_line_on_a_bad_database_url(settings):
    env = {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": "mysql://x@127.0.0.1/y",
    }
    stage = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "sink",
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(stage.communicate(), 60)
    lines = [line for line in stderr.decode().splitlines() if "mysql" in line]
    assert stage.returncode == 2, stderr.decode()[-2000:]
    assert len(lines) == 1 and lines[0].startswith("fleetstream sink: "), lines
    assert "Traceback" not in stderr.decode()
    assert "unavailable" not in stderr.decode()

"""Daily mileage on plain PostgreSQL takes in fixes however late they are stored.

The refresh loop calls tracksolid.refresh_mileage_daily_changes: each
device-day of the last 30 days that got a fix stored since the previous run (by
position_history.stored_at, from the run's mark less a safety overlap) is
recomputed on its own, today's as any other. A fix may be stored days after it
was received (a sink or database outage, a Kafka backlog, a replayed topic)
and still counts. Days are local days of the fleet zone, Africa/Nairobi; every
date here is relative to today.
"""

from __future__ import annotations

import shutil
from datetime import time, timedelta

import asyncpg
import pytest
from test_sinks import fast, position, produce, running, until

from api.refresh import MILEAGE_TABLE, refresh_once
from fleetstream.db import create_pool
from migrations.runner import ROOT, migrate
from sinks.kinds import POSITION

D1, D2 = "862476050000001", "862476050000002"
CHANGES = "SELECT tracksolid.refresh_mileage_daily_changes()"
NO_OVERLAP = "SELECT tracksolid.refresh_mileage_daily_changes(overlap => '0')"
NOW = timedelta(0)
# A tiny interval: refresh_once then never skips for a peer's recent run.
EVERY_RUN = 0.001
MARKS = (
    "SELECT started_at, stored_before FROM reporting.refresh_log "
    "WHERE relation = 'tracksolid.v_mileage_daily_cagg' ORDER BY id"
)


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def add_fixes(
    conn,
    imei: str,
    days_ago: int,
    count: int,
    at: str = "08:00",
    received_ago: timedelta | None = None,
) -> None:
    """Insert ``count`` GPS fixes a minute apart from ``at`` local, ``days_ago``.

    Each fix is received 5 s after it was taken, or, given ``received_ago``,
    that long before now: a device that buffered fixes out of coverage uploads
    them at once, a pipeline that was down commits them hours after that.
    """
    await conn.execute(
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, "
        "speed_kmh, acc_on, pos_type, source, origin, received_at) "
        "SELECT $1, t, -1.0 + n * 0.009, 36.9, 60, true, 'GPS', 'push', 'pushgps', "
        "coalesce(now() - $5::interval, t + interval '5 seconds') "
        "FROM generate_series(0, $3 - 1) n, LATERAL (SELECT "
        "((tracksolid.local_today() - $2::integer) + $4::time)::timestamp "
        "AT TIME ZONE (SELECT tracksolid.fleet_timezone()) "
        "+ n * interval '1 minute' AS t) times",
        imei,
        days_ago,
        count,
        time.fromisoformat(at),
        received_ago,
    )


async def day_fixes(conn, imei: str, days_ago: int) -> int | None:
    """Return the fixes counted on a local day, None when the day has no row."""
    return await conn.fetchval(
        "SELECT fixes FROM tracksolid.v_mileage_daily WHERE imei = $1 "
        "AND local_date = tracksolid.local_today() - $2::integer",
        imei,
        days_ago,
    )


async def mark_stale(conn) -> None:
    """Mark every stored device-day, so that a recomputed one shows."""
    await conn.execute(f"UPDATE {MILEAGE_TABLE} SET fixes = -1")


async def test_fix_received_days_late_reaches_the_daily_mileage(db, database_url):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await refresh_once(pool, EVERY_RUN)
        before = await day_fixes(db, D1, 3)
        await add_fixes(db, D1, days_ago=3, count=3, at="09:00", received_ago=NOW)

        runs = await refresh_once(pool, EVERY_RUN)
    finally:
        await pool.close()

    assert before == 5
    assert [(run.relation, run.ok) for run in runs][-1] == (MILEAGE_TABLE, True)
    assert await day_fixes(db, D1, 3) == 8


async def test_each_touched_device_day_is_recomputed_and_nothing_between(db):
    for days_ago in (6, 5, 4, 3, 1):
        await add_fixes(db, D1, days_ago, count=4)
    await add_fixes(db, D2, days_ago=3, count=4)
    # Every fix here is stored within seconds: with an overlap, the second run
    # would take in the first run's fixes again.
    await db.execute(NO_OVERLAP)
    await mark_stale(db)
    await add_fixes(db, D1, days_ago=6, count=2, at="12:00", received_ago=NOW)
    await add_fixes(db, D1, days_ago=3, count=2, at="12:00", received_ago=NOW)
    # Today's fixes streaming in.
    await add_fixes(db, D2, days_ago=0, count=3, at="00:00", received_ago=NOW)

    written = await db.fetchval(NO_OVERLAP)

    assert await day_fixes(db, D1, 6) == 6
    assert await day_fixes(db, D1, 3) == 6
    # Between the touched days, and another device on a touched day: untouched.
    assert await day_fixes(db, D1, 5) == -1
    assert await day_fixes(db, D1, 4) == -1
    assert await day_fixes(db, D2, 3) == -1
    # A day that got nothing new, yesterday too, is left as it was.
    assert await day_fixes(db, D1, 1) == -1
    assert await day_fixes(db, D2, 0) == 3
    assert written == 3


@pytest.mark.parametrize("received_ago", [timedelta(hours=2), timedelta(days=2)])
async def test_fix_stored_long_after_it_was_received_is_taken_in(db, received_ago):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute(CHANGES)
    # Received long ago, committed only now: a sink that was down, a backlog.
    await add_fixes(db, D1, days_ago=3, count=2, at="10:00", received_ago=received_ago)

    await db.execute(CHANGES)

    assert await day_fixes(db, D1, 3) == 7


async def test_fix_committed_after_a_run_started_is_taken_in_by_the_next(
    db, database_url
):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute(CHANGES)
    # A sink transaction stamps stored_at with its start, then commits only
    # after the next refresh has read the table.
    sink = await asyncpg.connect(database_url)
    try:
        in_flight = sink.transaction()
        await in_flight.start()
        await add_fixes(sink, D1, days_ago=3, count=1, at="10:00", received_ago=NOW)
        await db.execute(CHANGES)
        missed_while_in_flight = await day_fixes(db, D1, 3)
        await in_flight.commit()
    finally:
        await sink.close()

    await db.execute(CHANGES)

    assert missed_while_in_flight == 5
    assert await day_fixes(db, D1, 3) == 6


@pytest.mark.parametrize("peeked", [False, True])
async def test_transaction_open_longer_than_the_overlap_is_taken_in(
    db, database_url, peeked
):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute(NO_OVERLAP)
    # A bulk load by hand, or a sink isolating refused rows statement by
    # statement: one transaction open across two runs, with no overlap at all.
    loader = await asyncpg.connect(database_url)
    caller = db.transaction()
    try:
        if peeked:
            # A caller that read the sessions earlier in its own transaction,
            # before the load began, holds a stale copy of them unless cleared.
            await caller.start()
            await db.fetch("SELECT * FROM pg_stat_activity")
        in_flight = loader.transaction()
        await in_flight.start()
        began = await loader.fetchval("SELECT now()")
        await add_fixes(loader, D1, days_ago=3, count=2, at="10:00", received_ago=NOW)
        await db.execute(NO_OVERLAP)
        if peeked:
            await caller.commit()
        await in_flight.commit()
    finally:
        await loader.close()

    await db.execute(NO_OVERLAP)

    marks = await db.fetch(MARKS)
    # The run that ran beside it marked the transaction's start, not its own.
    assert marks[1]["stored_before"] == began < marks[1]["started_at"]
    assert await day_fixes(db, D1, 3) == 7


async def test_fixes_the_sink_writes_are_stamped_and_taken_in(db, settings):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute(NO_OVERLAP)
    taken = await db.fetchval(
        "SELECT ((tracksolid.local_today() - 3) + time '09:00')::timestamp "
        "AT TIME ZONE tracksolid.fleet_timezone()"
    )
    # Taken three days ago, received two days ago, stored by the sink now.
    received = taken + timedelta(days=1)
    fixes = [
        position(D1, 0, gps_time=taken + timedelta(minutes=m), received_at=received)
        for m in range(4)
    ]
    before = await db.fetchval("SELECT clock_timestamp()")
    await produce(settings, "position", fixes)
    sink = fast(settings, POSITION)
    async with running(sink):
        await until(lambda: sink.stats.records == len(fixes), what="the fixes")
    after = await db.fetchval("SELECT clock_timestamp()")

    await db.execute(NO_OVERLAP)

    stamps = await db.fetch(
        "SELECT received_at, stored_at FROM tracksolid.position_history "
        "WHERE gps_time >= $1",
        taken,
    )
    assert len(stamps) == len(fixes)
    assert all(row["received_at"] == received for row in stamps)
    assert all(before <= row["stored_at"] <= after for row in stamps)
    assert sink.stats.dead_letters == 0
    assert await day_fixes(db, D1, 3) == 9


async def test_manual_backfill_does_not_move_the_mark_of_changes_taken_in(db):
    await add_fixes(db, D1, days_ago=3, count=5)
    await add_fixes(db, D1, days_ago=60, count=5)
    await db.execute(NO_OVERLAP)
    await add_fixes(db, D1, days_ago=3, count=2, at="10:00", received_ago=NOW)
    # A backfill of an old range, run by hand after the late fixes came in.
    backfilled = await db.fetchval(
        "SELECT tracksolid.refresh_mileage_daily("
        "now() - interval '61 days', now() - interval '59 days')"
    )

    await db.execute(NO_OVERLAP)

    assert backfilled == 1
    assert await day_fixes(db, D1, 60) == 5
    assert await day_fixes(db, D1, 3) == 7


async def test_first_run_and_a_rebuild_fill_the_last_30_days(db, database_url):
    for days_ago in (2, 10, 29, 40):
        await add_fixes(db, D1, days_ago, count=3)

    await db.execute(CHANGES)
    first = [await day_fixes(db, D1, d) for d in (2, 10, 29, 40)]
    # A new fleet zone rebuilds the table empty; the next run fills it again.
    await migrate(database_url, fleet_timezone="Asia/Kolkata")
    emptied = await db.fetchval(f"SELECT count(*) FROM {MILEAGE_TABLE}")
    await db.execute(CHANGES)
    refilled = await db.fetchval(
        f"SELECT count(*) FROM {MILEAGE_TABLE} "
        "WHERE day_start < now() - interval '5 days'"
    )

    assert first == [3, 3, 3, None]
    assert emptied == 0
    assert refilled == 2


async def test_stored_at_alone_is_indexed_on_every_partition(db):
    newest = await db.fetchval(
        "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'tracksolid.position_history'::regclass"
        " AND c.relname <> 'position_history_default'"
    )
    await db.execute(f"DROP TABLE tracksolid.{newest}")
    await db.execute("SELECT tracksolid.ensure_partitions()")

    # Each partition's BRIN indexes, by column and options.
    brin = await db.fetch(
        "SELECT c.relname, a.attname, ic.reloptions "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_index x ON x.indrelid = c.oid "
        "JOIN pg_class ic ON ic.oid = x.indexrelid "
        "JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'brin' "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] "
        "WHERE i.inhparent = 'tracksolid.position_history'::regclass"
    )
    partitions = await db.fetchval(
        "SELECT count(*) FROM pg_inherits "
        "WHERE inhparent = 'tracksolid.position_history'::regclass"
    )

    stored = {r["relname"] for r in brin if r["attname"] == "stored_at"}
    summarised = [r["reloptions"] for r in brin if r["attname"] == "stored_at"]
    assert partitions > 3
    assert newest in stored
    assert len(stored) == partitions
    assert set(map(tuple, summarised)) == {("autosummarize=on",)}
    assert {r["attname"] for r in brin} == {"gps_time", "stored_at"}


async def test_each_run_records_what_it_took_in(db):
    await add_fixes(db, D1, days_ago=3, count=2)

    await db.execute(CHANGES)
    await db.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")

    log = await db.fetch(MARKS)
    # No other transaction was open: the mark is the run's start.
    assert [row["stored_before"] == row["started_at"] for row in log] == [True, False]
    assert log[1]["stored_before"] is None


async def test_a_repeatable_read_caller_is_refused(db):
    async with db.transaction(isolation="repeatable_read"):
        with pytest.raises(asyncpg.RaiseError, match="repeatable read"):
            await db.execute(CHANGES)


async def partition_files(conn) -> dict[str, int]:
    """Return the data file of each partition of position_history, by name."""
    rows = await conn.fetch(
        "SELECT c.relname, c.relfilenode FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'tracksolid.position_history'::regclass"
    )
    return dict(rows)


@pytest.fixture
def before_stored_at(tmp_path):
    """Migration folders as they were before stored_at: 0001 to 0008, partitions."""
    (tmp_path / "versioned").mkdir()
    (tmp_path / "repeatable").mkdir()
    for path in (ROOT / "versioned").glob("*.sql"):
        if path.name < "0009":
            shutil.copy(path, tmp_path / "versioned")
    shutil.copy(
        ROOT / "repeatable" / "010_partitions.postgres.sql", tmp_path / "repeatable"
    )
    return tmp_path


async def test_stored_at_is_added_without_rewriting_the_fixes(
    empty_database_url, before_stored_at
):
    await migrate(empty_database_url, root=before_stored_at)
    conn = await asyncpg.connect(empty_database_url)
    try:
        # Only 0001 to 0008 applied: no local_today() yet, plain times.
        await conn.execute(
            "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, "
            "pos_type, source, origin, received_at) "
            "SELECT $1, now() - d * interval '1 day' + n * interval '1 minute', "
            "-1.0 + n * 0.009, 36.9, 'GPS', 'push', 'pushgps', now() "
            "FROM generate_series(2, 3) d, generate_series(0, 2) n",
            D1,
        )
        files = await partition_files(conn)
        shutil.copy(
            ROOT / "versioned" / "0009_position_stored_at.postgres.sql",
            before_stored_at / "versioned",
        )
        await migrate(empty_database_url, root=before_stored_at)
        after = await partition_files(conn)
        applied = await conn.fetchval(
            "SELECT applied_at FROM fleetstream_migrations.applied "
            "WHERE name = '0009_position_stored_at'"
        )
        stamps = await conn.fetch(
            "SELECT DISTINCT stored_at FROM tracksolid.position_history"
        )
        await migrate(empty_database_url)
        await conn.execute(CHANGES)
        counted = await conn.fetchval(f"SELECT sum(fixes) FROM {MILEAGE_TABLE}")
    finally:
        await conn.close()

    assert len(files) > 3
    assert after == files
    # The rows already there read as stored by the migration's transaction.
    assert [row["stored_at"] for row in stamps] == [applied]
    assert counted == 6

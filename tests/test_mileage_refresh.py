"""Daily mileage on plain PostgreSQL takes in fixes that arrive days late.

The refresh loop calls tracksolid.refresh_mileage_daily_changes: each
device-day of the last 30 days that received a fix since the previous run (by
position_history.received_at, less a safety overlap) is recomputed on its own,
today's as any other. Days are local days of the
fleet zone, Africa/Nairobi; every date here is relative to today.
"""

from __future__ import annotations

from datetime import time

import asyncpg
import pytest

from api.refresh import MILEAGE_TABLE, refresh_once
from fleetstream.db import create_pool
from migrations.runner import migrate

D1, D2 = "862476050000001", "862476050000002"
CHANGES = "SELECT tracksolid.refresh_mileage_daily_changes()"
# A tiny interval: refresh_once then never skips for a peer's recent run.
EVERY_RUN = 0.001


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def add_fixes(
    conn, imei: str, days_ago: int, count: int, at: str = "08:00", late: bool = False
) -> None:
    """Insert ``count`` GPS fixes a minute apart from ``at`` local, ``days_ago``.

    On time, each fix is received 5 s after it was taken; ``late`` ones are
    received now, as a device that buffered them out of coverage uploads them.
    """
    await conn.execute(
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, "
        "speed_kmh, acc_on, pos_type, source, origin, received_at) "
        "SELECT $1, t, -1.0 + n * 0.009, 36.9, 60, true, 'GPS', 'push', 'pushgps', "
        "CASE WHEN $5 THEN now() ELSE t + interval '5 seconds' END "
        "FROM generate_series(0, $3 - 1) n, LATERAL (SELECT "
        "((tracksolid.local_today() - $2::integer) + $4::time)::timestamp "
        "AT TIME ZONE (SELECT tracksolid.fleet_timezone()) "
        "+ n * interval '1 minute' AS t) times",
        imei,
        days_ago,
        count,
        time.fromisoformat(at),
        late,
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
        await add_fixes(db, D1, days_ago=3, count=3, at="09:00", late=True)

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
    await db.execute(CHANGES)
    await mark_stale(db)
    await add_fixes(db, D1, days_ago=6, count=2, at="12:00", late=True)
    await add_fixes(db, D1, days_ago=3, count=2, at="12:00", late=True)
    # Today's fixes streaming in.
    await add_fixes(db, D2, days_ago=0, count=3, at="00:00", late=True)

    written = await db.fetchval(CHANGES)

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


async def test_fix_committed_after_a_run_started_is_taken_in_by_the_next(
    db, database_url
):
    await add_fixes(db, D1, days_ago=3, count=5)
    await db.execute(CHANGES)
    # A sink transaction stamps received_at, then commits only after the next
    # refresh has read the table.
    sink = await asyncpg.connect(database_url)
    try:
        in_flight = sink.transaction()
        await in_flight.start()
        await add_fixes(sink, D1, days_ago=3, count=1, at="10:00", late=True)
        await db.execute(CHANGES)
        missed_while_in_flight = await day_fixes(db, D1, 3)
        await in_flight.commit()
    finally:
        await sink.close()

    await db.execute(CHANGES)

    assert missed_while_in_flight == 5
    assert await day_fixes(db, D1, 3) == 6


async def test_manual_backfill_does_not_move_the_mark_of_changes_taken_in(db):
    await add_fixes(db, D1, days_ago=3, count=5)
    await add_fixes(db, D1, days_ago=60, count=5)
    no_overlap = "SELECT tracksolid.refresh_mileage_daily_changes(overlap => '0')"
    await db.execute(no_overlap)
    await add_fixes(db, D1, days_ago=3, count=2, at="10:00", late=True)
    # A backfill of an old range, run by hand after the late fixes came in.
    backfilled = await db.fetchval(
        "SELECT tracksolid.refresh_mileage_daily("
        "now() - interval '61 days', now() - interval '59 days')"
    )

    await db.execute(no_overlap)

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


async def test_received_at_is_indexed_on_every_partition(db):
    newest = await db.fetchval(
        "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'tracksolid.position_history'::regclass"
        " AND c.relname <> 'position_history_default'"
    )
    await db.execute(f"DROP TABLE tracksolid.{newest}")
    await db.execute("SELECT tracksolid.ensure_partitions()")

    unindexed = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'tracksolid.position_history'::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_index x "
        "  JOIN pg_class ic ON ic.oid = x.indexrelid "
        "  JOIN pg_am am ON am.oid = ic.relam "
        "  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] "
        "  WHERE x.indrelid = c.oid AND am.amname = 'brin' "
        "    AND a.attname = 'received_at')"
    )
    partitions = await db.fetchval(
        "SELECT count(*) FROM pg_inherits "
        "WHERE inhparent = 'tracksolid.position_history'::regclass"
    )

    assert partitions > 3
    assert [row["relname"] for row in unindexed] == []


async def test_each_run_records_what_it_took_in(db):
    await add_fixes(db, D1, days_ago=3, count=2)

    await db.execute(CHANGES)
    await db.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")

    log = await db.fetch(
        "SELECT started_at, received_before FROM reporting.refresh_log "
        "WHERE relation = $1 ORDER BY id",
        MILEAGE_TABLE,
    )
    assert [row["received_before"] == row["started_at"] for row in log] == [True, False]
    assert log[1]["received_before"] is None

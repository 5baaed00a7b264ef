"""The refresh loop: one refresh per interval across workers, every run logged."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from api.refresh import (
    MILEAGE_TABLE,
    REFRESH_LOCK_KEY,
    TRIPS_VIEW,
    refresh_once,
    run_refresh_loop,
)
from fleetstream.db import create_pool
from fleetstream.embedded import free_port

IMEI = "860000000000001"


@pytest.fixture
async def db(settings):
    conn = await asyncpg.connect(settings.database_url)
    now = datetime.now(UTC).replace(microsecond=0)
    await conn.execute(
        "INSERT INTO tracksolid.devices (imei, vehicle_number) VALUES ($1, 'KZA-123A')",
        IMEI,
    )
    await conn.execute(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time,"
        " distance_km, source) VALUES ('t1', $1, $2, $3, 4.2, 'stream')",
        IMEI,
        now - timedelta(hours=2),
        now - timedelta(hours=1),
    )
    # Two fixes about 1.1 km apart while moving: one device-day of mileage.
    await conn.executemany(
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng,"
        " speed_kmh, pos_type, source, origin, received_at)"
        " VALUES ($1, $2, $3, 36.8, 40, 'GPS', 'poll', 'test', now())",
        [(IMEI, now - timedelta(minutes=3), -1.30), (IMEI, now, -1.29)],
    )
    yield conn
    await conn.close()


@pytest.fixture
async def pools(settings, db):
    """Two pools standing for two API workers."""
    opened = [
        await create_pool(settings.database_url, min_size=1, max_size=2)
        for _ in range(2)
    ]
    yield opened
    for pool in opened:
        await pool.close()


async def log_rows(conn, relation: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT started_at, finished_at, row_count, ok, error"
        " FROM reporting.refresh_log WHERE relation = $1 ORDER BY started_at",
        relation,
    )


async def test_refresh_fills_trips_and_mileage_and_logs_each(db, pools):
    assert await db.fetchval("SELECT count(*) FROM reporting.v_trips") == 0

    runs = await refresh_once(pools[0], 300)

    assert [(run.relation, run.ok, run.rows) for run in runs] == [
        (TRIPS_VIEW, True, 1),
        (MILEAGE_TABLE, True, 1),
    ]
    assert await db.fetchval("SELECT trip_id FROM reporting.v_trips") == "t1"
    assert await db.fetchval(
        "SELECT gps_km FROM tracksolid.v_mileage_daily_cagg"
    ) == pytest.approx(1.11, abs=0.01)
    trips_log = await log_rows(db, TRIPS_VIEW)
    assert [(r["row_count"], r["ok"], r["error"]) for r in trips_log] == [
        (1, True, None)
    ]
    assert trips_log[0]["finished_at"] >= trips_log[0]["started_at"]
    assert len(await log_rows(db, MILEAGE_TABLE)) == 1


async def test_worker_skips_while_another_holds_the_lock(db, pools):
    holder = await pools[1].acquire()
    await holder.execute("SELECT pg_advisory_lock($1)", REFRESH_LOCK_KEY)

    skipped = await refresh_once(pools[0], 300)
    await holder.execute("SELECT pg_advisory_unlock($1)", REFRESH_LOCK_KEY)
    await pools[1].release(holder)
    after_release = await refresh_once(pools[0], 300)

    assert skipped == []
    assert [run.relation for run in after_release] == [TRIPS_VIEW, MILEAGE_TABLE]
    assert len(await log_rows(db, TRIPS_VIEW)) == 1


async def test_worker_skips_when_a_peer_refreshed_this_interval(db, pools):
    first = await refresh_once(pools[0], 300)
    second = await refresh_once(pools[1], 300)

    assert [run.ok for run in first] == [True, True]
    assert second == []
    assert len(await log_rows(db, TRIPS_VIEW)) == 1


async def test_two_loops_refresh_once_per_tick(db, pools):
    interval = 1.0
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(run_refresh_loop(pool, interval, stop)) for pool in pools
    ]
    await asyncio.sleep(3.4)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*loops), timeout=10)

    started = [row["started_at"] for row in await log_rows(db, TRIPS_VIEW)]
    # Each loop ticks at 0, 1, 2 and 3 s: four ticks, so at most four refreshes,
    # never two within half an interval of each other.
    assert 2 <= len(started) <= 4
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    assert min(gaps) >= interval / 2


async def test_failed_refresh_is_logged_and_the_loop_goes_on(db, pools):
    # Without its unique index the view cannot be refreshed concurrently.
    await db.execute("DROP INDEX reporting.ix_v_trips_trip_id")

    runs = await refresh_once(pools[0], 300)

    assert [(run.relation, run.ok) for run in runs] == [
        (TRIPS_VIEW, False),
        (MILEAGE_TABLE, True),
    ]
    logged = await log_rows(db, TRIPS_VIEW)
    assert [(r["ok"], r["row_count"]) for r in logged] == [(False, None)]
    assert "concurrently" in logged[0]["error"].lower()


async def test_refresh_recreates_missing_partitions(db, pools):
    newest = await db.fetchval(
        "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'tracksolid.position_history'::regclass"
        " AND c.relname <> 'position_history_default'"
    )
    assert newest is not None, "plain PostgreSQL has monthly partitions"
    await db.execute(f"DROP TABLE tracksolid.{newest}")

    await refresh_once(pools[0], 300)

    assert await db.fetchval("SELECT to_regclass($1)", f"tracksolid.{newest}")


async def test_two_api_worker_processes_refresh_once_per_interval(db, settings):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_API_HOST": "127.0.0.1",
        "FLEETSTREAM_API_PORT": str(port),
        "FLEETSTREAM_API_WORKERS": "2",
        "FLEETSTREAM_VTRIPS_REFRESH_INTERVAL_SECONDS": "1",
        "FLEETSTREAM_DB_POOL_MAX_SIZE": "2",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "fleetstream.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(150):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).is_success:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        await asyncio.sleep(4)
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)

    assert errors.count("api ready") == 2, errors[-2000:]
    assert errors.count("refresh loop stopped") == 2
    started = [row["started_at"] for row in await log_rows(db, TRIPS_VIEW)]
    assert len(started) >= 3
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
    assert min(gaps) >= 0.5

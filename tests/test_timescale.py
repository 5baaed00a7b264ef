"""The TimescaleDB branch of the migrations, against plain PostgreSQL.

TimescaleDB cannot be installed into the test server, so this runs a real
TimescaleDB 2.23 on PostgreSQL 17 compiled to WASM (PGlite, served over the wire
protocol by migrations/pglite/server.mjs). It needs node and npm, and is skipped,
saying so, where either is missing; the packages are installed once under
.fleetstream/pglite. PGlite serves one connection at a time, shares one session
between successive connections (hence no statement cache), never answers a
polite close (hence terminate) and runs no background jobs (hence policies are
run by hand).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest
from test_reporting_functions import (
    D1,
    D5,
    LIVE_QUERY,
    MILEAGE_QUERY,
    RULES_QUERY,
    STEP_KM,
    TRACK_QUERY,
    TRIP_CASES,
    TRIPS_QUERY,
    expected_mileage,
    expected_rule_days,
    rule_days,
    seed_fleet,
    seed_mileage_rules,
)

from fleetstream.embedded import free_port
from migrations.runner import ROOT, migrate

REPO = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "pglite"
INSTALL_DIR = REPO / ".fleetstream" / "pglite"
CAGG = "tracksolid.v_mileage_daily_cagg"


def install_pglite() -> Path:
    """Install the PGlite packages once; skip without node or npm.

    A failed install fails the run: node and npm are there, so it is a fault.
    """
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not on PATH: the TimescaleDB branch is "
            "tested on PGlite, which runs under node and is installed with npm"
        )
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "server.mjs"):
        shutil.copy(HARNESS / name, INSTALL_DIR / name)
    marker = INSTALL_DIR / "node_modules" / "@electric-sql" / "pglite-socket"
    if not marker.exists():
        result = subprocess.run(
            [
                "npm",
                "install",
                "--ignore-scripts",
                "--legacy-peer-deps",
                "--no-audit",
                "--no-fund",
            ],
            cwd=INSTALL_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(
                "npm install of the PGlite TimescaleDB packages failed "
                f"(exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
    return INSTALL_DIR


@pytest.mark.parametrize(
    ("on_path", "missing"), [((), "node and npm"), (("node",), "npm")]
)
def test_missing_node_or_npm_skips_and_says_which(
    tmp_path, monkeypatch, on_path, missing
):
    for tool in on_path:
        stub = tmp_path / tool
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(pytest.skip.Exception) as skipped:
        install_pglite()

    assert str(skipped.value).startswith(f"{missing} not on PATH")


@pytest.fixture(scope="module")
def pglite_url(tmp_path_factory):
    """Yield the URL of a fresh TimescaleDB served by PGlite."""
    folder = install_pglite()
    port = free_port()
    log = tmp_path_factory.mktemp("pglite") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            ["node", "server.mjs"],
            cwd=folder,
            env={**os.environ, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while f"ready {port}" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PGlite server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"postgresql://postgres:pglite@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
async def timescale(pglite_url):
    """Yield the plans of a first and a second migration, then one connection."""
    first = await migrate(pglite_url)
    second = await migrate(pglite_url)
    conn = await asyncpg.connect(pglite_url, statement_cache_size=0)
    try:
        await seed_fleet(conn)
        await seed_mileage_rules(conn)
        yield first, second, conn
    finally:
        conn.terminate()


@pytest.fixture
async def plain(database_url):
    conn = await asyncpg.connect(database_url)
    await seed_fleet(conn)
    await seed_mileage_rules(conn)
    yield conn
    await conn.close()


async def test_timescaledb_branch_migrates_and_reruns_cleanly(timescale):
    first, second, conn = timescale

    hypertables = await conn.fetch(
        "SELECT hypertable_name FROM timescaledb_information.hypertables "
        "ORDER BY hypertable_name"
    )
    cagg = await conn.fetchrow(
        "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = 'v_mileage_daily_cagg'"
    )
    jobs = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.jobs "
        "WHERE hypertable_name = 'v_mileage_daily_cagg' "
        "AND proc_name = 'policy_refresh_continuous_aggregate'"
    )

    assert first[0] == "create extension timescaledb"
    assert "versioned 0003_time_series.timescaledb.sql" in first
    assert "repeatable 051_mileage_daily.timescaledb.sql" in first
    assert not any(".postgres." in step for step in first)
    assert second == ["ensure_partitions 3 months: 0 created"]
    assert [row["hypertable_name"] for row in hypertables] == [
        "fuel_readings",
        "heartbeats",
        "position_history",
        "temperature_readings",
    ]
    assert cagg["materialized_only"] is False
    assert jobs == 1


async def test_continuous_aggregate_calls_only_immutable_functions(timescale):
    conn = timescale[2]

    # Every function the aggregate's query calls, operators' included, read from
    # its stored query tree: pg_depend leaves out the built-in ones.
    called = await conn.fetch(
        "SELECT DISTINCT p.oid::regprocedure::text AS function, "
        "p.provolatile::text AS volatility "
        "FROM _timescaledb_catalog.continuous_agg ca "
        "JOIN pg_class v ON v.relname = ca.direct_view_name "
        " AND v.relnamespace = ca.direct_view_schema::regnamespace "
        "JOIN pg_rewrite r ON r.ev_class = v.oid "
        "CROSS JOIN LATERAL regexp_matches(r.ev_action::text, "
        " ':(?:funcid|opfuncid|aggfnoid) (\\d+)', 'g') AS m "
        "JOIN pg_proc p ON p.oid = m[1]::oid "
        "WHERE ca.user_view_name = 'v_mileage_daily_cagg'"
    )

    functions = {row["function"]: row["volatility"] for row in called}
    assert "tracksolid.path_km(tracksolid.path_point)" in functions
    assert any(name.startswith("time_bucket(") for name in functions)
    assert {name: v for name, v in functions.items() if v != "i"} == {}


@pytest.mark.parametrize(("args", "expected"), TRIP_CASES)
async def test_trips_for_map_match(timescale, plain, args, expected):
    conn = timescale[2]

    on_timescale = [row["trip_id"] for row in await conn.fetch(TRIPS_QUERY, *args)]
    on_postgres = [row["trip_id"] for row in await plain.fetch(TRIPS_QUERY, *args)]

    assert on_timescale == on_postgres == expected


@pytest.mark.parametrize(
    "filters", [(None, None), ("Nairobi Dairy", None), (None, "on"), ("x", "off")]
)
async def test_live_positions_match(timescale, plain, filters):
    conn = timescale[2]

    on_timescale = [tuple(row) for row in await conn.fetch(LIVE_QUERY, *filters)]
    on_postgres = [tuple(row) for row in await plain.fetch(LIVE_QUERY, *filters)]

    assert on_timescale == on_postgres


@pytest.mark.parametrize(("vehicle", "hours"), [("kca 123a", 24), (D1, 3), ("X", 9)])
async def test_vehicle_track_matches(timescale, plain, vehicle, hours):
    conn = timescale[2]

    # Both trails were seeded relative to each server's own clock.
    on_timescale = [
        (r["lat"], r["lng"]) for r in await conn.fetch(TRACK_QUERY, vehicle, hours)
    ]
    on_postgres = [
        (r["lat"], r["lng"]) for r in await plain.fetch(TRACK_QUERY, vehicle, hours)
    ]

    assert on_timescale == on_postgres
    assert len(on_postgres) == {24: 143, 3: 17, 9: 0}[hours]


async def test_daily_mileage_matches_real_time_then_materialised(timescale, plain):
    conn = timescale[2]
    expected = [tuple(row) for row in await plain.fetch(MILEAGE_QUERY)]

    real_time = [tuple(row) for row in await conn.fetch(MILEAGE_QUERY)]
    await conn.execute(f"CALL refresh_continuous_aggregate('{CAGG}', NULL, NULL)")
    materialised = [tuple(row) for row in await conn.fetch(MILEAGE_QUERY)]
    job = await conn.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE hypertable_name = 'v_mileage_daily_cagg'"
    )
    await conn.execute(f"CALL run_job({job})")
    after_policy = [tuple(row) for row in await conn.fetch(MILEAGE_QUERY)]

    assert real_time == materialised == after_policy == expected
    assert [(r[0], str(r[1]), r[2], float(r[3]), r[4]) for r in expected] == (
        expected_mileage()
    )


async def test_daily_distance_rules_match_real_time_then_materialised(timescale, plain):
    conn = timescale[2]
    on_postgres = rule_days(await plain.fetch(RULES_QUERY))

    real_time = rule_days(await conn.fetch(RULES_QUERY))
    await conn.execute(
        f"CALL refresh_continuous_aggregate('{CAGG}', '2026-04-01', '2026-05-01')"
    )
    materialised = rule_days(await conn.fetch(RULES_QUERY))

    assert real_time == materialised == on_postgres == expected_rule_days()


async def test_late_fix_reaches_daily_mileage_after_refresh(timescale, plain):
    conn = timescale[2]
    late = (
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,"
        f" pos_type, source, origin, received_at) VALUES ('{D1}', "
        "'2026-03-10 04:59+00', -1.009, 36.9, 60, 'GPS', 'backfill', "
        "'jimi.device.track.list', now()) ON CONFLICT DO NOTHING"
    )
    await conn.execute(f"CALL refresh_continuous_aggregate('{CAGG}', NULL, NULL)")

    for db in (conn, plain):
        await db.execute(late)
    await plain.execute(
        "SELECT tracksolid.refresh_mileage_daily('2026-03-09', '2026-03-11')"
    )
    await conn.execute(
        f"CALL refresh_continuous_aggregate('{CAGG}', '2026-03-09', '2026-03-11')"
    )
    on_timescale = [tuple(row) for row in await conn.fetch(MILEAGE_QUERY)]
    on_postgres = [tuple(row) for row in await plain.fetch(MILEAGE_QUERY)]

    assert on_timescale == on_postgres
    assert on_postgres[0][2] == expected_mileage()[0][2] + 1


async def test_new_zone_and_gap_rebuild_the_continuous_aggregate(timescale, pglite_url):
    # PGlite serves one connection at a time: the module's connection must go
    # before the migrate command can connect, so this test runs last.
    timescale[2].terminate()

    steps = await migrate(
        pglite_url, fleet_timezone="Asia/Kolkata", max_fix_gap_seconds=7200
    )

    conn = await asyncpg.connect(pglite_url, statement_cache_size=0)
    try:
        comment = await conn.fetchval(f"SELECT obj_description('{CAGG}'::regclass)")
        jobs = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs "
            "WHERE hypertable_name = 'v_mileage_daily_cagg'"
        )
        days = await conn.fetch(
            "SELECT DISTINCT day_start FROM tracksolid.v_mileage_daily_cagg "
            "WHERE day_start < '2026-04-01'"
        )
        # D5's silence of 3601 s now counts.
        d5_km = await conn.fetchval(
            "SELECT gps_km FROM tracksolid.v_mileage_daily WHERE imei = $1", D5
        )
    finally:
        conn.terminate()
    assert "repeatable 051_mileage_daily.timescaledb.sql" in steps
    assert "repeatable 070_analytics_views.sql" in steps
    assert "zone Asia/Kolkata, fix gap 7200 s" in comment
    assert d5_km == pytest.approx(5 * STEP_KM, abs=1e-6)
    assert jobs == 1
    # Local midnight in Kolkata (UTC+5:30) is 18:30 UTC.
    assert {(r["day_start"].hour, r["day_start"].minute) for r in days} == {(18, 30)}

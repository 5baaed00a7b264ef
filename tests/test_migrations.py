"""The migrations runner on real PostgreSQL: fresh, re-run, refused, concurrent."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from fleetstream.db import with_database
from migrations.runner import ROOT, MigrationError, migrate

POSITION_COLUMNS = (
    "imei, gps_time, lat, lng, speed_kmh, direction_deg, acc_on, pos_type, "
    "satellites, altitude_m, reupload, odometer_m, source, origin, received_at"
).split(", ")
DEVICE_COLUMNS = (
    "imei, device_name, vehicle_number, vehicle_number_norm, vehicle_name, "
    "vehicle_model, vehicle_icon, device_model, sim, vin, driver_name, "
    "driver_phone, device_group, enabled, expires_at, activated_at, account, "
    "cost_centre, city, updated_at"
).split(", ")
VERSIONED = sorted(p.name for p in (ROOT / "versioned").glob("*.sql"))


async def columns(conn, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [row["attname"] for row in rows]


@pytest.fixture
def migrations_copy(tmp_path):
    """A private copy of the migration folders that a test may edit."""
    shutil.copytree(ROOT / "versioned", tmp_path / "versioned")
    shutil.copytree(ROOT / "repeatable", tmp_path / "repeatable")
    return tmp_path


async def test_fresh_database_gets_every_file_once_and_rerun_is_a_no_op(
    empty_database_url,
):
    first = await migrate(empty_database_url)
    second = await migrate(empty_database_url)

    applied = [step.split(" ", 1)[1] for step in first if step.startswith("versioned")]
    expected = [name for name in VERSIONED if ".timescaledb." not in name]
    assert applied == expected
    assert any(step.startswith("repeatable 070_analytics_views") for step in first)
    assert second == ["ensure_partitions 3 months: 0 created"]
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await columns(conn, "tracksolid.position_history") == [
            *POSITION_COLUMNS,
            "stored_at",
        ]
        assert await columns(conn, "tracksolid.live_positions") == POSITION_COLUMNS
        assert await columns(conn, "tracksolid.devices") == DEVICE_COLUMNS
        ledger = await conn.fetch(
            "SELECT name, variant, length(checksum) AS n "
            "FROM fleetstream_migrations.applied WHERE kind = 'versioned'"
        )
        assert {row["variant"] for row in ledger} <= {None, "postgres"}
        assert {row["n"] for row in ledger} == {64}
    finally:
        await conn.close()


async def test_dry_run_plans_the_same_steps_and_changes_nothing(empty_database_url):
    plan = await migrate(empty_database_url, dry_run=True)

    conn = await asyncpg.connect(empty_database_url)
    try:
        schemas = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN "
            "('tracksolid', 'reporting', 'fleetstream_migrations')"
        )
    finally:
        await conn.close()
    assert schemas == 0
    done = await migrate(empty_database_url)
    assert plan[:-1] == done[:-1]
    assert await migrate(empty_database_url, dry_run=True) == [
        "ensure_partitions 3 months"
    ]


async def test_edited_applied_file_is_refused(empty_database_url, migrations_copy):
    await migrate(empty_database_url, root=migrations_copy)
    edited = migrations_copy / "versioned" / "0002_registry.sql"
    edited.write_text(edited.read_text() + "\n-- an afterthought\n")

    with pytest.raises(MigrationError, match="0002_registry.sql was applied") as err:
        await migrate(empty_database_url, root=migrations_copy)
    assert "new numbered file" in str(err.value)
    with pytest.raises(MigrationError):
        await migrate(empty_database_url, root=migrations_copy, dry_run=True)


async def test_new_versioned_file_runs_alone(empty_database_url, migrations_copy):
    await migrate(empty_database_url, root=migrations_copy)
    (migrations_copy / "versioned" / "9000_extra.sql").write_text(
        "CREATE TABLE tracksolid.extra (id int PRIMARY KEY);"
    )

    steps = await migrate(empty_database_url, root=migrations_copy)

    assert steps[0] == "versioned 9000_extra.sql"
    assert not any(step.startswith("repeatable") for step in steps)


REPEATABLE = sorted(
    p.name for p in (ROOT / "repeatable").glob("*.sql") if ".timescaledb." not in p.name
)


@pytest.mark.parametrize("name", REPEATABLE)
async def test_changed_repeatable_file_reruns_with_those_after_it(
    database_url, migrations_copy, name
):
    changed = migrations_copy / "repeatable" / name
    changed.write_text(changed.read_text() + "\n-- reworded\n")

    steps = await migrate(database_url, root=migrations_copy)

    repeatable = [s.split(" ", 1)[1] for s in steps if s.startswith("repeatable")]
    assert repeatable == REPEATABLE[REPEATABLE.index(name) :]
    assert await migrate(database_url, root=migrations_copy) == [
        "ensure_partitions 3 months: 0 created"
    ]


async def test_changed_fleet_zone_rebuilds_the_daily_mileage(empty_database_url):
    await migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    await conn.execute(
        "INSERT INTO tracksolid.settings VALUES ('shift_start_local', '07:30')"
    )
    await conn.close()
    # Settings read at query time need no rebuild; the zone does.
    unchanged = await migrate(empty_database_url, fleet_timezone="Africa/Nairobi")

    planned = await migrate(
        empty_database_url, fleet_timezone="Asia/Kolkata", dry_run=True
    )
    steps = await migrate(empty_database_url, fleet_timezone="Asia/Kolkata")

    assert unchanged == ["ensure_partitions 3 months: 0 created"]
    assert "repeatable 051_mileage_daily.postgres.sql" in steps
    assert planned[:-1] == steps[:-1]
    conn = await asyncpg.connect(empty_database_url)
    try:
        zone = await conn.fetchval("SELECT tracksolid.fleet_timezone()")
        comment = await conn.fetchval(
            "SELECT obj_description('tracksolid.v_mileage_daily_cagg'::regclass)"
        )
    finally:
        await conn.close()
    assert zone == "Asia/Kolkata"
    assert "zone Asia/Kolkata" in comment


async def test_changed_fix_gap_rebuilds_the_daily_mileage(empty_database_url):
    await migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        # Three 1 km steps at 60 km/h, the middle one after 2 hours of silence.
        await conn.execute(
            "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, "
            "speed_kmh, pos_type, source, origin, received_at) "
            "SELECT '860000000000099', t::timestamptz, lat, 36.9, 60, 'GPS', "
            "'push', 'pushgps', now() FROM (VALUES "
            "('2026-04-02 06:00+00', -1.0), ('2026-04-02 06:01+00', -0.991), "
            "('2026-04-02 08:01+00', -0.982), ('2026-04-02 08:02+00', -0.973)"
            ") AS v (t, lat)"
        )
        await conn.execute("SELECT tracksolid.refresh_mileage_daily()")
        before = await conn.fetchval("SELECT gps_km FROM tracksolid.v_mileage_daily")
    finally:
        await conn.close()

    unchanged = await migrate(empty_database_url, max_fix_gap_seconds=3600)
    steps = await migrate(empty_database_url, max_fix_gap_seconds=7200)
    again = await migrate(empty_database_url, max_fix_gap_seconds=7200)
    conn = await asyncpg.connect(empty_database_url)
    try:
        comment = await conn.fetchval(
            "SELECT obj_description('tracksolid.v_mileage_daily_cagg'::regclass)"
        )
        await conn.execute("SELECT tracksolid.refresh_mileage_daily()")
        after = await conn.fetchval("SELECT gps_km FROM tracksolid.v_mileage_daily")
    finally:
        await conn.close()

    step_km = 6371008.8 * math.radians(0.009) / 1000
    assert before == pytest.approx(2 * step_km, abs=1e-6)
    # The stored default is no change; a new gap rebuilds once.
    assert not [step for step in unchanged if step.startswith("repeatable")]
    assert "repeatable 051_mileage_daily.postgres.sql" in steps
    assert "fix gap 7200 s" in comment
    assert not [step for step in again if step.startswith("repeatable")]
    assert after == pytest.approx(3 * step_km, abs=1e-6)


async def test_concurrent_runners_apply_each_file_once(empty_database_url):
    plans = await asyncio.gather(*(migrate(empty_database_url) for _ in range(4)))

    with_files = [plan for plan in plans if any("versioned" in s for s in plan)]
    assert len(with_files) == 1
    conn = await asyncpg.connect(empty_database_url)
    try:
        counts = await conn.fetch(
            "SELECT name, count(*) AS n FROM fleetstream_migrations.applied "
            "GROUP BY name"
        )
    finally:
        await conn.close()
    assert {row["n"] for row in counts} == {1}
    assert len(counts) == len(with_files[0]) - 1


async def test_partitions_take_late_rows_out_of_the_default(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        old = datetime(2020, 2, 29, 23, 59, tzinfo=UTC)
        far = datetime(2031, 1, 1, tzinfo=UTC)
        for when in (old, far):
            await conn.execute(
                "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, "
                "source, origin, received_at) VALUES ('1', $1, 0.5, 36.8, 'poll', "
                "'jimi.device.track.list', now())",
                when,
            )
        waiting = await conn.fetchval(
            "SELECT count(*) FROM tracksolid.position_history_default"
        )

        created = await conn.fetchval("SELECT tracksolid.ensure_partitions()")

        where = await conn.fetch(
            "SELECT tableoid::regclass::text AS part FROM tracksolid.position_history "
            "ORDER BY gps_time"
        )
    finally:
        await conn.close()
    assert waiting == 2
    assert created == 2
    assert [row["part"] for row in where] == [
        "tracksolid.position_history_p202002",
        "tracksolid.position_history_p203101",
    ]


async def test_plate_column_always_follows_the_rule(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO tracksolid.devices (imei, vehicle_number, vehicle_number_norm)"
            " VALUES ('1', 'kca-123a', 'whatever the writer thought')"
        )
        inserted = await conn.fetchval(
            "SELECT vehicle_number_norm FROM tracksolid.devices"
        )
        await conn.execute("UPDATE tracksolid.devices SET vehicle_number = 'KBZ 9O9'")
        updated = await conn.fetchval(
            "SELECT vehicle_number_norm FROM tracksolid.devices"
        )
    finally:
        await conn.close()
    assert (inserted, updated) == ("KCA123A", "KBZ9O9")


async def test_every_time_series_has_a_natural_key_of_device_and_time(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        keys = await conn.fetch(
            """
            SELECT c.conrelid::regclass::text AS tbl,
                   array_agg(a.attname::text ORDER BY a.attname) AS cols
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
            WHERE c.contype = 'p' AND c.connamespace = 'tracksolid'::regnamespace
              AND c.conrelid::regclass::text NOT LIKE '%\\_p2%'
              AND c.conrelid::regclass::text NOT LIKE '%\\_default'
            GROUP BY 1
            """
        )
    finally:
        await conn.close()
    by_table = {row["tbl"]: set(row["cols"]) for row in keys}
    assert by_table["tracksolid.position_history"] == {"imei", "gps_time"}
    assert by_table["tracksolid.alarms"] == {"imei", "alarm_type", "alarm_time"}
    assert by_table["tracksolid.poll_watermarks"] == {"imei", "method"}
    for table in ("heartbeats", "fuel_readings", "obd_readings", "lbs_readings"):
        cols = by_table[f"tracksolid.{table}"]
        assert "imei" in cols and any(c.endswith("_time") for c in cols), table


def run_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetstream.cli", "migrate", *args],
        env={
            **os.environ,
            "DATABASE_URL": url,
            "FLEETSTREAM_ENVIRONMENT": "development",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_creates_the_database_plans_then_migrates(pg_server):
    name = f"fs_cli_{uuid.uuid4().hex[:10]}"
    url = with_database(pg_server, name)
    try:
        planned = await asyncio.to_thread(run_cli, url, "--dry-run")
        zone = {
            "FLEETSTREAM_FLEET_TIMEZONE": "Africa/Kampala",
            "FLEETSTREAM_MAX_FIX_GAP_SECONDS": "900",
        }
        done = await asyncio.to_thread(run_cli, url, **zone)
        again = await asyncio.to_thread(run_cli, url, **zone)
        conn = await asyncpg.connect(url)
        try:
            stored = await conn.fetchval("SELECT tracksolid.fleet_timezone()")
            gap = await conn.fetchval("SELECT tracksolid.max_fix_gap_seconds()")
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    # A dry run against a missing database plans its creation.
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.splitlines()[0] == f'would run create database "{name}"'
    assert done.returncode == 0, done.stderr
    assert "ran versioned 0001_schemas.sql" in done.stdout.splitlines()
    assert stored == "Africa/Kampala"
    assert gap == 900.0
    assert again.stdout.splitlines() == [
        "ran ensure_partitions 3 months: 0 created",
        "database is up to date; nothing pending except routine partition upkeep",
    ]


async def test_concurrent_partition_maintenance_creates_each_partition_once(
    database_url,
):
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        created = await asyncio.gather(
            *(
                c.fetchval("SELECT tracksolid.ensure_partitions('5 years')")
                for c in conns
            )
        )
        parts = await conns[0].fetchval(
            "SELECT count(*) FROM pg_inherits "
            "WHERE inhparent = 'tracksolid.position_history'::regclass"
        )
    finally:
        for c in conns:
            await c.close()
    # Last month to 60 months ahead is 62 monthly partitions, 5 of which the
    # migration made (last month to 3 months ahead), for each of 4 tables.
    assert sorted(created) == [0, 0, 4 * (62 - 5)]
    assert parts == 62 + 1


async def test_every_view_and_api_function_is_documented(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        undocumented = await conn.fetch(
            """
            SELECT c.oid::regclass::text AS name FROM pg_class c
            WHERE c.relnamespace IN ('tracksolid'::regnamespace,
                                     'reporting'::regnamespace)
              AND c.relkind IN ('v', 'm') AND obj_description(c.oid) IS NULL
            UNION ALL
            SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = 'reporting'::regnamespace
              AND p.proname LIKE 'fn\\_%' AND obj_description(p.oid) IS NULL
            """
        )
        views = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relkind IN ('v', 'm') AND "
            "relnamespace IN ('tracksolid'::regnamespace, 'reporting'::regnamespace)"
        )
    finally:
        await conn.close()
    assert [row["name"] for row in undocumented] == []
    # 13 analytics views, 12 reporting views, v_trips and v_mileage_daily.
    assert views == 13 + 12 + 1 + 1

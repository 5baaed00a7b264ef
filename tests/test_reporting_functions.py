"""The API's SQL functions, daily mileage and the views on seeded fleet data.

The fleet zone is Africa/Nairobi (UTC+3, no daylight saving), so local midnight
is 21:00 UTC. ``seed_fleet`` and the ``*_QUERY`` constants are shared with
tests/test_timescale.py, which checks that TimescaleDB gives the same answers.
"""

from __future__ import annotations

import math
from datetime import datetime

import asyncpg
import pytest

from fleetstream.settings import Settings
from processors.derived import DerivedConfig, DeviceDerivation

D1, D2, D3, D4 = (f"86000000000000{n}" for n in range(1, 5))
# Points 0.009 degrees of latitude apart are this many km apart on our sphere.
STEP_KM = 6371008.8 * math.radians(0.009) / 1000

SEED_SQL = f"""
INSERT INTO tracksolid.devices (imei, vehicle_number, driver_name, cost_centre,
                                city, enabled)
VALUES ('{D1}', 'KCA 123A', 'Alice Wanjiru', 'Nairobi Dairy', 'Nairobi', true),
       ('{D2}', 'kbz-456b', 'Brian Otieno', 'Mombasa Fresh', 'Mombasa', true),
       ('{D3}', 'KDA 789C', NULL, 'Nairobi Dairy', 'Nakuru', NULL),
       ('{D4}', 'KIA 111', 'Dan Kip', 'Mombasa Fresh', 'Mombasa', false);

-- Latest fixes: D1 moving, D2 idling, D3 silent for 3 h, D4 disabled.
INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng, speed_kmh,
    direction_deg, acc_on, pos_type, source, origin, received_at)
SELECT imei, date_trunc('second', now()) - ago, lat, lng, speed, 90, acc, 'GPS',
       'poll', 'jimi.user.device.location.list', now()
FROM (VALUES ('{D1}', interval '2 minutes', -1.28, 36.82, 45.0, true),
             ('{D2}', interval '5 minutes', -4.05, 39.66, 0.0, true),
             ('{D3}', interval '3 hours', -0.30, 36.07, 0.0, false),
             ('{D4}', interval '1 minute', -4.06, 39.67, 20.0, true))
     AS v (imei, ago, lat, lng, speed, acc);

-- D1's recent trail: a fix every 10 minutes for 30 hours, heading north, and a
-- cell-tower fix among them. D2 drove until 20 minutes ago, then stood.
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, source, origin, received_at)
SELECT '{D1}',
       date_trunc('second', now()) - interval '2 minutes' - n * interval '10 minutes',
       -1.28 - n * 0.001, 36.82, 40, true, CASE WHEN n = 7 THEN 'LBS' ELSE 'GPS' END,
       'poll', 'jimi.device.track.list', now()
FROM generate_series(0, 179) n;
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, source, origin, received_at)
VALUES ('{D2}', date_trunc('second', now()) - interval '20 minutes', -4.059, 39.66,
        30, true, 'GPS', 'push', 'pushgps', now()),
       ('{D2}', date_trunc('second', now()) - interval '5 minutes', -4.05, 39.66,
        0, true, 'GPS', 'push', 'pushgps', now());

-- A day of D1 on 2026-03-10 (local): a 9-step drive north at 60 km/h with a
-- cell-tower fix in the middle of it, then parked with GPS jitter and one wild
-- jump; the last fix falls after local midnight, on 2026-03-11.
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, source, origin, received_at)
SELECT '{D1}', timestamptz '2026-03-10 05:00+00' + n * interval '1 minute',
       -1.0 + n * 0.009, 36.9, 60, true, 'GPS', 'poll', 'jimi.device.track.list',
       now()
FROM generate_series(0, 9) n
UNION ALL
SELECT '{D1}', timestamptz '2026-03-10 05:04:30+00', -0.9, 37.0, 0, true, 'LBS',
       'poll', 'jimi.device.track.list', now()
UNION ALL
SELECT '{D1}', timestamptz '2026-03-10 06:00+00' + n * interval '1 minute',
       -1.0 + 9 * 0.009 + CASE WHEN n % 2 = 0 THEN 0 ELSE 0.0002 END,
       36.9, 0, false, 'GPS', 'poll', 'jimi.device.track.list', now()
FROM generate_series(0, 19) n
UNION ALL
SELECT '{D1}', timestamptz '2026-03-10 06:10:30+00', -0.5, 36.9, 0, false, 'GPS',
       'poll', 'jimi.device.track.list', now()
UNION ALL
SELECT '{D1}', timestamptz '2026-03-10 21:10+00', -0.919, 36.9, 0, false, 'GPS',
       'poll', 'jimi.device.track.list', now();

-- D2 on 2026-03-10 reports an odometer: 35.5 km, whatever its GPS path says.
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, odometer_m, source, origin, received_at)
SELECT '{D2}', timestamptz '2026-03-10 08:00+00' + n * interval '10 minutes',
       -4.0 + n * 0.01, 39.6, 50, true, 'GPS', 100000 + n * 7100, 'push',
       'pushgps', now()
FROM generate_series(0, 5) n;

-- Trips. T1 (stream) and T2 (platform) are the same drive across local midnight;
-- T7 starts the moment T3 ends; T5 starts at local midnight; T6 is still open.
INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time, distance_km,
    duration_s, max_speed_kmh, avg_speed_kmh, driver_name, source, updated_at)
VALUES
 ('T1', '{D1}', '2026-03-10 20:30+00', '2026-03-10 21:30+00', 30.0, 3600, 80, 30,
  NULL, 'stream', '2026-03-10 22:00+00'),
 ('T2', '{D1}', '2026-03-10 20:31+00', '2026-03-10 21:29+00', 29.5, 3480, 79, 30.5,
  NULL, 'platform', '2026-03-10 21:45+00'),
 ('T3', '{D1}', '2026-03-11 06:00+00', '2026-03-11 07:00+00', 12.0, 3600, 50, 12,
  NULL, 'stream', now()),
 ('T7', '{D1}', '2026-03-11 07:00+00', '2026-03-11 07:30+00', 6.0, 1800, 40, 12,
  NULL, 'stream', now()),
 ('T4', '{D2}', '2026-03-11 10:00+00', '2026-03-11 11:00+00', 20.0, 3600, 70, 20,
  'Brian Otieno', 'stream', now()),
 ('T5', '{D3}', '2026-03-11 21:00+00', '2026-03-11 21:20+00', 5.0, 1200, 45, 15,
  'Carol Achieng', 'platform', now()),
 ('T6', '{D2}', '2026-03-12 05:00+00', NULL, NULL, NULL, NULL, NULL,
  NULL, 'stream', now());

INSERT INTO tracksolid.alarms (imei, alarm_type, alarm_time, alarm_name)
VALUES ('{D1}', '3', '2026-03-10 20:59+00', 'Vibration alarm'),
       ('{D2}', '3', '2026-03-10 21:01+00', 'Vibration alarm'),
       ('{D2}', '128', '2026-03-10 21:02+00', 'Overspeed alarm');
"""

TRIPS_QUERY = (
    "SELECT trip_id FROM reporting.fn_trips_for_map($1::text[], $2, $3, $4, "
    "$5::timestamp, $6::timestamp)"
)
LIVE_QUERY = (
    "SELECT imei, vehicle_number, driver_name, cost_centre, city, acc_status, status, "
    "lat, lng FROM reporting.fn_live_positions($1, $2)"
)
TRACK_QUERY = (
    "SELECT imei, gps_time, lat, lng, pos_type FROM reporting.fn_vehicle_track($1, $2)"
)
MILEAGE_QUERY = (
    "SELECT imei, local_date, fixes, round(distance_km::numeric, 6) AS km, "
    "distance_source, round(gps_km::numeric, 6) AS gps_km "
    "FROM tracksolid.v_mileage_daily WHERE local_date < '2026-04-01' "
    "ORDER BY imei, local_date"
)
# (vehicles, driver, cost_centre, city, start, end) -> visible trips, in order.
TRIP_CASES = [
    ((None, None, None, None, None, None), ["T2", "T3", "T7", "T4", "T5", "T6"]),
    (
        (None, None, None, None, datetime(2026, 3, 11), datetime(2026, 3, 12)),
        ["T2", "T3", "T7", "T4"],
    ),
    (
        (None, None, None, None, datetime(2026, 3, 10), datetime(2026, 3, 11)),
        ["T2"],
    ),
    # Zone-less bounds are Nairobi wall-clock: 18:00-23:59 local ends before T5.
    (
        (None, None, None, None, datetime(2026, 3, 11, 18), datetime(2026, 3, 11, 23)),
        [],
    ),
    (
        (None, None, None, None, datetime(2026, 3, 12), datetime(2026, 3, 12, 1)),
        ["T5"],
    ),
    # The open trip T6 started at 08:00 local.
    (
        (None, None, None, None, datetime(2026, 3, 12, 8), datetime(2026, 3, 12, 9)),
        ["T6"],
    ),
    ((["kca123a"], None, None, None, None, None), ["T2", "T3", "T7"]),
    (
        ([" KCA-123-A ", D2], None, None, None, None, None),
        ["T2", "T3", "T7", "T4", "T6"],
    ),
    # T6 names no driver; the device's driver drove it.
    (([], "brian otieno", None, None, None, None), ["T4", "T6"]),
    ((None, None, "NAIROBI DAIRY", None, None, None), ["T2", "T3", "T7", "T5"]),
    ((None, "", "", "nakuru", None, None), ["T5"]),
    ((["KZZ 000"], None, None, None, None, None), []),
]


async def seed_fleet(conn) -> None:
    """Load the seeded fleet and refresh the relations derived from it."""
    await conn.execute(SEED_SQL)
    await conn.execute("SELECT reporting.refresh_v_trips()")
    await conn.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")


def expected_mileage() -> list[tuple]:
    """Return (imei, local date, fixes, km, source) of the seeded days."""
    return [
        (D1, "2026-03-10", 32, round(9 * STEP_KM, 6), "gps"),
        (D1, "2026-03-11", 1, 0.0, "gps"),
        (D2, "2026-03-10", 6, 35.5, "odometer"),
    ]


# The stream's rules for daily distance, one device-day each in April (outside
# MILEAGE_QUERY): a silence longer than the fix gap, fixes without speed, and
# odometers that were reset, jumped, ran backwards or disagree within slack.
D5, D6, D7, D8, D9, D10 = (f"8600000000000{n:02d}" for n in range(5, 11))
# Points 0.0001 degrees of latitude apart are this many km apart.
SMALL_STEP_KM = 6371008.8 * math.radians(0.0001) / 1000

RULES_SQL = f"""
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, odometer_m, source, origin, received_at)
SELECT imei, t::timestamptz, lat, 36.9, speed, true, 'GPS', odometer, 'push',
       'pushgps', now()
FROM (VALUES
    -- D5: 1 km steps at 60 km/h; the fourth fix follows 3601 s of silence, the
    -- sixth exactly 3600 s after the fifth.
    ('{D5}', '2026-04-02 06:00:00+00', -1.0, 60.0, NULL::float8),
    ('{D5}', '2026-04-02 06:01:00+00', -0.991, 60, NULL),
    ('{D5}', '2026-04-02 06:02:00+00', -0.982, 60, NULL),
    ('{D5}', '2026-04-02 07:02:01+00', -0.973, 60, NULL),
    ('{D5}', '2026-04-02 07:03:01+00', -0.964, 60, NULL),
    ('{D5}', '2026-04-02 08:03:01+00', -0.955, 60, NULL),
    -- D7: reset to 100 m in the middle of the day.
    ('{D7}', '2026-04-04 06:00:00+00', -1.0, 50, 500000),
    ('{D7}', '2026-04-04 06:10:00+00', -0.991, 50, 507100),
    ('{D7}', '2026-04-04 06:20:00+00', -0.982, 50, 100),
    ('{D7}', '2026-04-04 06:30:00+00', -0.973, 50, 7200),
    -- D8: 993 km in ten minutes.
    ('{D8}', '2026-04-05 06:00:00+00', -1.0, 50, 500000),
    ('{D8}', '2026-04-05 06:10:00+00', -0.991, 50, 507100),
    ('{D8}', '2026-04-05 06:20:00+00', -0.982, 50, 1500000),
    ('{D8}', '2026-04-05 06:30:00+00', -0.973, 50, 1507100),
    -- D9: running backwards.
    ('{D9}', '2026-04-06 06:00:00+00', -1.0, 50, 507100),
    ('{D9}', '2026-04-06 06:10:00+00', -0.991, 50, 500000),
    -- D10: a first reading 400 m above the next (a poll rounded against a push)
    -- and a zero from a device that lost its counter: 14.2 km by odometer.
    ('{D10}', '2026-04-07 06:00:00+00', -1.0, 50, 500400),
    ('{D10}', '2026-04-07 06:05:00+00', -0.9955, 50, 500000),
    ('{D10}', '2026-04-07 06:10:00+00', -0.991, 50, 0),
    ('{D10}', '2026-04-07 06:20:00+00', -0.982, 50, 507100),
    ('{D10}', '2026-04-07 06:30:00+00', -0.973, 50, 514200)
) AS v (imei, t, lat, speed, odometer);

-- D6 reports no speed: ten 11 m steps a second apart (40 km/h, a drive), then
-- ten 0-6 m steps a minute apart (parked), then an 11 m step a second long from
-- a fix that reports 0 km/h (the reported speed decides: jitter).
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, source, origin, received_at)
SELECT '{D6}', timestamptz '2026-04-03 06:00:00+00' + n * interval '1 second',
       -1.0 + n * 0.0001, 36.9, NULL::float8, true, 'GPS', 'push', 'pushgps', now()
FROM generate_series(0, 10) n
UNION ALL
SELECT '{D6}', timestamptz '2026-04-03 06:00:10+00' + n * interval '1 minute',
       -0.999 + (n % 2) * 0.00005, 36.9, NULL, false, 'GPS', 'push', 'pushgps',
       now()
FROM generate_series(1, 10) n
UNION ALL
SELECT '{D6}', timestamptz '2026-04-03 06:11:00+00', -0.999, 36.9, 0, false, 'GPS',
       'push', 'pushgps', now()
UNION ALL
SELECT '{D6}', timestamptz '2026-04-03 06:11:01+00', -0.9989, 36.9, NULL, false,
       'GPS', 'push', 'pushgps', now();
"""

RULES_QUERY = (
    "SELECT imei, local_date, fixes, round(distance_km::numeric, 6) AS km, "
    "distance_source, round(gps_km::numeric, 6) AS gps_km "
    "FROM tracksolid.v_mileage_daily WHERE local_date >= '2026-04-01' "
    "AND local_date < '2026-05-01' ORDER BY imei, local_date"
)


async def seed_mileage_rules(conn) -> None:
    """Load the device-days of the daily distance rules and refresh them."""
    await conn.execute(RULES_SQL)
    await conn.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")


def expected_rule_days() -> list[tuple]:
    """Return (imei, local date, fixes, km, source, gps km) of the rule days."""
    km = round(STEP_KM, 6)
    return [
        (D5, "2026-04-02", 6, round(4 * STEP_KM, 6), "gps", round(4 * STEP_KM, 6)),
        (
            D6,
            "2026-04-03",
            23,
            round(10 * SMALL_STEP_KM, 6),
            "gps",
            round(10 * SMALL_STEP_KM, 6),
        ),
        (D7, "2026-04-04", 4, round(3 * STEP_KM, 6), "gps", round(3 * STEP_KM, 6)),
        (D8, "2026-04-05", 4, round(3 * STEP_KM, 6), "gps", round(3 * STEP_KM, 6)),
        (D9, "2026-04-06", 2, km, "gps", km),
        (D10, "2026-04-07", 5, 14.2, "odometer", round(3 * STEP_KM, 6)),
    ]


def rule_days(rows) -> list[tuple]:
    return [
        (
            r["imei"],
            str(r["local_date"]),
            r["fixes"],
            float(r["km"]),
            r["distance_source"],
            float(r["gps_km"]),
        )
        for r in rows
    ]


@pytest.fixture
async def fleet(database_url):
    conn = await asyncpg.connect(database_url)
    await seed_fleet(conn)
    yield conn
    await conn.close()


@pytest.mark.parametrize(("args", "expected"), TRIP_CASES)
async def test_trips_for_map(fleet, args, expected):
    rows = await fleet.fetch(TRIPS_QUERY, *args)

    assert [row["trip_id"] for row in rows] == expected


async def test_consecutive_ranges_return_each_overlapping_trip_once_per_range(fleet):
    days = [datetime(2026, 3, d) for d in range(9, 14)]
    seen: dict[str, int] = {}
    for lo, hi in zip(days, days[1:], strict=False):
        rows = await fleet.fetch(TRIPS_QUERY, None, None, None, None, lo, hi)
        ids = [row["trip_id"] for row in rows]
        assert len(ids) == len(set(ids))
        for trip_id in ids:
            seen[trip_id] = seen.get(trip_id, 0) + 1

    # T2 runs from 23:31 to 00:29 local, so two daily ranges each show it.
    assert seen == {"T2": 2, "T3": 1, "T7": 1, "T4": 1, "T5": 1, "T6": 1}


async def test_trip_columns_carry_registry_and_local_date(fleet):
    row = await fleet.fetchrow(
        "SELECT * FROM reporting.fn_trips_for_map(ARRAY['KCA123A'], NULL, NULL, NULL, "
        "'2026-03-10', '2026-03-11')"
    )

    assert row["trip_id"] == "T2"
    assert row["vehicle_number"] == "KCA 123A"
    assert row["driver_name"] == "Alice Wanjiru"
    assert (row["cost_centre"], row["city"]) == ("Nairobi Dairy", "Nairobi")
    assert str(row["trip_date"]) == "2026-03-10"
    assert row["source"] == "platform"


async def test_stream_trip_shows_again_once_the_platform_trip_is_gone(fleet):
    await fleet.execute("DELETE FROM tracksolid.trips WHERE trip_id = 'T2'")
    await fleet.execute("SELECT reporting.refresh_v_trips()")

    rows = await fleet.fetch(
        TRIPS_QUERY, None, None, None, None, datetime(2026, 3, 10), None
    )

    assert [row["trip_id"] for row in rows][:1] == ["T1"]
    logged = await fleet.fetchval(
        "SELECT count(*) FROM reporting.refresh_log "
        "WHERE relation = 'reporting.v_trips'"
    )
    assert logged == 2


async def test_revised_stream_trip_replaces_the_version_it_overlaps(fleet):
    # Late fixes moved T3's start 5 minutes earlier: the stream wrote it again
    # under a new trip_id, and the old row stays in the table.
    await fleet.execute(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time, "
        "distance_km, source, updated_at) VALUES ('T3b', $1, "
        "'2026-03-11 05:55+00', '2026-03-11 07:00+00', 12.5, 'stream', "
        "now() + interval '1 minute')",
        D1,
    )
    await fleet.execute("SELECT reporting.refresh_v_trips()")

    rows = await fleet.fetch(TRIPS_QUERY, ["KCA123A"], None, None, None, None, None)

    assert [row["trip_id"] for row in rows] == ["T2", "T3b", "T7"]


@pytest.mark.parametrize(
    ("cost_centre", "acc_status", "expected"),
    [
        (None, None, {D1: "moving", D2: "idle", D3: "offline"}),
        ("all", "ALL", {D1: "moving", D2: "idle", D3: "offline"}),
        ("nairobi dairy", None, {D1: "moving", D3: "offline"}),
        (None, "off", {D3: "offline"}),
        ("Mombasa Fresh", "on", {D2: "idle"}),
        (None, "unknown", {}),
    ],
)
async def test_live_positions(fleet, cost_centre, acc_status, expected):
    rows = await fleet.fetch(
        "SELECT * FROM reporting.fn_live_positions($1, $2)", cost_centre, acc_status
    )

    assert {row["imei"]: row["status"] for row in rows} == expected
    for row in rows:
        assert row["acc_status"] == ("on" if row["acc_on"] else "off")
        assert row["minutes_since_fix"] >= 1


async def test_vehicle_track_is_the_last_hours_of_satellite_fixes(fleet):
    rows = await fleet.fetch(TRACK_QUERY, "kca 123-a", 24)
    by_imei = await fleet.fetch(TRACK_QUERY, D1, 2)
    clamped = await fleet.fetch(TRACK_QUERY, "KCA123A", 0)

    # Fixes n = 0..143 fall within 24 h of now (the newest is 2 minutes old);
    # n = 7 is a cell-tower fix.
    assert len(rows) == 144 - 1
    assert all(row["pos_type"] == "GPS" for row in rows)
    times = [row["gps_time"] for row in rows]
    assert times == sorted(times)
    assert len(by_imei) == 12 - 1
    assert len(clamped) == 6
    assert await fleet.fetch(TRACK_QUERY, "KIA111", 24) == []


async def test_daily_mileage_prefers_odometer_and_ignores_jitter_and_cells(fleet):
    rows = await fleet.fetch(MILEAGE_QUERY)

    got = [
        (
            r["imei"],
            str(r["local_date"]),
            r["fixes"],
            float(r["km"]),
            r["distance_source"],
        )
        for r in rows
    ]
    assert got == expected_mileage()


async def test_mileage_refresh_takes_in_late_fixes(fleet):
    await fleet.execute(
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,"
        " pos_type, source, origin, received_at) VALUES ($1, '2026-03-10 04:59+00',"
        " -1.0 - 0.009, 36.9, 60, 'GPS', 'backfill', 'jimi.device.track.list', "
        "now())",
        D1,
    )

    written = await fleet.fetchval(
        "SELECT tracksolid.refresh_mileage_daily('2026-03-10 12:00+00', "
        "'2026-03-10 12:00:01+00')"
    )
    km = await fleet.fetchval(
        "SELECT distance_km FROM tracksolid.v_mileage_daily "
        "WHERE imei = $1 AND local_date = '2026-03-10'",
        D1,
    )

    assert written == 2  # D1 and D2 on local 2026-03-10
    assert km == pytest.approx(10 * STEP_KM, abs=1e-6)


async def test_summaries_and_fleet_views(fleet):
    daily = await fleet.fetchrow(
        "SELECT * FROM reporting.v_daily_summary WHERE day = '2026-03-11'"
    )
    by_cc = await fleet.fetch(
        "SELECT cost_centre, trips FROM reporting.v_daily_summary_cost_centre "
        "WHERE day = '2026-03-11' ORDER BY cost_centre"
    )
    weekly = await fleet.fetchrow(
        "SELECT * FROM reporting.v_weekly_summary WHERE week_start = '2026-03-09'"
    )
    status = await fleet.fetch("SELECT status, vehicles FROM tracksolid.v_fleet_status")
    centres = await fleet.fetch("SELECT * FROM reporting.v_filter_cost_centres")
    alarms = await fleet.fetch(
        "SELECT day::text, alarm_type, alarms, vehicles FROM tracksolid.v_alarms_daily "
        "ORDER BY day, alarm_type"
    )
    clock = await fleet.fetchrow(
        "SELECT * FROM tracksolid.v_driver_clock_daily "
        "WHERE driver_name = 'Brian Otieno'"
    )
    km = await fleet.fetchrow(
        "SELECT * FROM tracksolid.v_fleet_km_daily WHERE day = '2026-03-10'"
    )
    idle = await fleet.fetch("SELECT * FROM tracksolid.v_currently_idle")
    still = await fleet.fetch("SELECT imei FROM tracksolid.v_vehicles_not_moved_today")
    dispatch = await fleet.fetch("SELECT imei FROM tracksolid.v_active_dispatch_map")

    assert (daily["trips"], daily["vehicles"], float(daily["distance_km"])) == (
        3,
        2,
        38.0,
    )
    assert [(r["cost_centre"], r["trips"]) for r in by_cc] == [
        ("Mombasa Fresh", 1),
        ("Nairobi Dairy", 2),
    ]
    assert weekly["trips"] == 6
    assert dict((r["status"], r["vehicles"]) for r in status) == {
        "moving": 1,
        "idle": 1,
        "parked": 0,
        "offline": 1,
        "never_reported": 0,
    }
    assert {r["cost_centre"]: r["vehicles"] for r in centres} == {
        "Nairobi Dairy": 2,
        "Mombasa Fresh": 1,
    }
    # 20:59 UTC is still 2026-03-10 in Nairobi, 21:01 is already the 11th.
    assert [tuple(r) for r in alarms] == [
        ("2026-03-10", "3", 1, 1),
        ("2026-03-11", "128", 1, 1),
        ("2026-03-11", "3", 1, 1),
    ]
    assert clock["clock_in"].isoformat() == "2026-03-11T10:00:00+00:00"
    assert float(clock["on_duty_hours"]) == 1.0
    assert float(km["distance_km"]) == pytest.approx(9 * STEP_KM + 35.5, abs=0.01)
    assert float(km["odometer_km"]) == 35.5
    assert [r["imei"] for r in idle] == [D2]
    assert 14 <= float(idle[0]["idle_minutes"]) <= 16
    assert D3 in {r["imei"] for r in still}
    assert D4 not in {r["imei"] for r in still}
    assert {r["imei"] for r in dispatch} == {D1, D2}


@pytest.mark.parametrize(
    ("plate", "expected"),
    [
        ("kca 123a", "KCA123A"),
        ("K.C.A-123\u00a0A", "KCA123A"),
        ("\ufeffKCA\u200b123\u2060A\u3000", "KCA123A"),
        ("ＫＣＡ－１２３ａ", "KCA123A"),
        ("KCA\u2212123A", "KCA123A"),
        ("KIA 111", "KIA111"),
        ("KOA 000", "KOA000"),
        ("KCA_123/A", "KCA_123/A"),
        ("ксa 1", "ксA1"),
        (" \t-. ", None),
    ],
)
async def test_normalize_plate(database_url, plate, expected):
    conn = await asyncpg.connect(database_url)
    try:
        got = await conn.fetchval("SELECT reporting.normalize_plate($1)", plate)
        null = await conn.fetchval("SELECT reporting.normalize_plate(NULL)")
    finally:
        await conn.close()
    assert got == expected
    assert null is None


async def test_normalize_plate_never_merges_distinct_characters(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        merged = await conn.fetch(
            "SELECT a, b FROM unnest($1::text[]) a, unnest($1::text[]) b "
            "WHERE a < b "
            "AND reporting.normalize_plate(a) = reporting.normalize_plate(b)",
            ["I", "1", "l", "O", "0", "o", "Q", "S", "5", "B", "8", "Z", "2"],
        )
    finally:
        await conn.close()
    # Only a letter and its own lower case may meet.
    assert [(r["a"], r["b"]) for r in merged] == [("O", "o")]


@pytest.fixture
async def rules(database_url):
    conn = await asyncpg.connect(database_url)
    await seed_mileage_rules(conn)
    yield conn
    await conn.close()


async def test_daily_mileage_follows_the_stream_rules(rules):
    got = rule_days(await rules.fetch(RULES_QUERY))

    assert got == expected_rule_days()


async def test_stream_gives_the_rule_days_the_same_figures(rules):
    rows = await rules.fetch(
        "SELECT imei, (extract(epoch FROM gps_time) * 1000)::bigint AS gps_time, "
        "lat, lng, speed_kmh, acc_on, odometer_m, pos_type "
        "FROM tracksolid.position_history "
        "WHERE gps_time >= '2026-04-01' AND gps_time < '2026-05-01' "
        "ORDER BY imei, gps_time"
    )
    config = DerivedConfig.from_settings(
        Settings(environment="test", fleet_timezone="Africa/Nairobi")
    )

    stream = []
    for imei, day, *_ in expected_rule_days():
        device = DeviceDerivation(imei, config)
        for row in rows:
            if row["imei"] == imei:
                device.apply(config.fix(dict(row)), 1_000)
        record = device.day_record(day, 0)
        stream.append(
            (
                imei,
                day,
                record["fixes"],
                round(record["distance_m"] / 1000, 6),
                record["distance_source"],
                round(record["gps_distance_m"] / 1000, 6),
            )
        )

    assert stream == expected_rule_days()


async def test_no_distance_across_a_silence_longer_than_the_fix_gap(rules):
    # D5's 3601 s silence counts once the gap allows it.
    await rules.execute(
        "UPDATE tracksolid.settings SET value = '3601' "
        "WHERE key = 'max_fix_gap_seconds'"
    )
    await rules.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")
    wider = await rules.fetchval(
        "SELECT gps_km FROM tracksolid.v_mileage_daily WHERE imei = $1", D5
    )
    await rules.execute(
        "UPDATE tracksolid.settings SET value = '60' WHERE key = 'max_fix_gap_seconds'"
    )
    await rules.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")
    # Only the steps a minute apart are left: 06:00-06:02 and 07:02-07:03.
    narrower = await rules.fetchval(
        "SELECT gps_km FROM tracksolid.v_mileage_daily WHERE imei = $1", D5
    )

    assert wider == pytest.approx(5 * STEP_KM, abs=1e-6)
    assert narrower == pytest.approx(3 * STEP_KM, abs=1e-6)


async def test_path_aggregate_measures_like_the_refresh(rules):
    # tracksolid.path_km is what the TimescaleDB continuous aggregate uses.
    rows = await rules.fetch(
        "SELECT imei, tracksolid.path_km(ROW(gps_time, lat, lng, speed_kmh)"
        "::tracksolid.path_point) AS km FROM tracksolid.position_history "
        "WHERE gps_time >= '2026-04-01' AND gps_time < '2026-05-01' "
        "GROUP BY imei ORDER BY imei"
    )

    assert [(r["imei"], round(r["km"], 6)) for r in rows] == [
        (imei, gps_km) for imei, _, _, _, _, gps_km in expected_rule_days()
    ]


@pytest.mark.parametrize(
    ("readings", "source"),
    [
        # (readings, delta, min, first, last, span s) -> usable?
        ((2, 14_200.0, 500_000.0, 500_000.0, 514_200.0, 1800.0), True),
        ((1, 0.0, 500_000.0, 500_000.0, 500_000.0, 0.0), False),
        ((2, 2e6, 500_000.0, 500_000.0, 2_500_000.0, 86_000.0), False),
        # 1 km of slack either end, not a metre more.
        ((3, 14_200.0, 500_000.0, 501_000.0, 514_200.0, 1800.0), True),
        ((3, 14_200.0, 500_000.0, 501_000.1, 514_200.0, 1800.0), False),
        ((3, 14_200.0, 500_000.0, 500_000.0, 513_200.0, 1800.0), True),
        ((3, 14_200.0, 500_000.0, 500_000.0, 513_199.9, 1800.0), False),
        # 250 km/h over an hour plus 1 km.
        ((2, 251_000.0, 0.1, 0.1, 251_000.1, 3600.0), True),
        ((2, 251_000.1, 0.1, 0.1, 251_000.2, 3600.0), False),
        ((2, None, None, None, None, None), False),
    ],
)
async def test_odometer_checks_at_their_limits(database_url, readings, source):
    conn = await asyncpg.connect(database_url)
    try:
        usable = await conn.fetchval(
            "SELECT tracksolid.odometer_usable($1, $2, $3, $4, $5, $6)", *readings
        )
    finally:
        await conn.close()

    assert usable is source

"""The fleet manager's views, on small fleets whose answers are computed by hand.

The fleet zone is Africa/Nairobi (UTC+3, no daylight saving), so its local
midnight is 21:00 UTC. Every test talks through a session in America/New_York,
and each query is read again under other session zones: an answer that moved
with the client's zone fails. Views that depend on now() are seeded relative to
the database's now() inside one transaction, where now() stands still, so a test
gives the same answer at any hour, even one that straddles local midnight.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
import pytest

FLEET_ZONE = ZoneInfo("Africa/Nairobi")
SESSION_ZONE = "America/New_York"
# Behind, at and ahead of the fleet zone, as far ahead as UTC+14.
ZONES = (SESSION_ZONE, "UTC", "Africa/Nairobi", "Asia/Tokyo", "Pacific/Kiritimati")

V1, V2, V3, V4 = (f"86100000000000{n}" for n in range(1, 5))


@pytest.fixture
async def db(database_url):
    """Yield a connection in America/New_York, inside a transaction."""
    conn = await asyncpg.connect(
        database_url, server_settings={"timezone": SESSION_ZONE}
    )
    # The hand-computed answers assume the default fleet zone.
    assert await conn.fetchval("SELECT tracksolid.fleet_timezone()") == FLEET_ZONE.key
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


async def in_every_zone(conn, query: str, *args) -> list[dict]:
    """Return the rows of ``query``, checking that every session zone agrees."""
    answers = []
    for zone in ZONES:
        await conn.execute(f"SET LOCAL TimeZone = '{zone}'")
        answers.append([dict(row) for row in await conn.fetch(query, *args)])
    await conn.execute(f"SET LOCAL TimeZone = '{SESSION_ZONE}'")
    for zone, answer in zip(ZONES[1:], answers[1:], strict=True):
        assert answer == answers[0], f"session zone {zone} changes the answer"
    return answers[0]


async def db_now(conn) -> datetime:
    return await conn.fetchval("SELECT now()")


async def local_midnight(conn) -> datetime:
    """Return the start of today in the fleet zone, as a UTC time."""
    today = (await db_now(conn)).astimezone(FLEET_ZONE).date()
    return datetime.combine(today, time(), FLEET_ZONE).astimezone(UTC)


def local(day: str, clock: str = "00:00") -> datetime:
    """Return a wall-clock time of the fleet zone as a UTC time."""
    naive = datetime.fromisoformat(f"{day}T{clock}")
    return naive.replace(tzinfo=FLEET_ZONE).astimezone(UTC)


async def add_devices(conn, *rows) -> None:
    """Register ``(imei, plate, driver, cost_centre, city, enabled)`` rows."""
    await conn.executemany(
        "INSERT INTO tracksolid.devices (imei, vehicle_number, driver_name,"
        " cost_centre, city, enabled) VALUES ($1, $2, $3, $4, $5, $6)",
        rows,
    )


def trip(
    trip_id: str,
    imei: str,
    start: datetime,
    minutes: int,
    km: float,
    top_kmh: float = 60.0,
    driver: str | None = None,
) -> tuple:
    """Return a closed drive's row for ``add_trips``."""
    end = start + timedelta(minutes=minutes)
    return (trip_id, imei, start, end, km, minutes * 60, top_kmh, driver)


async def add_trips(conn, *trips: tuple) -> None:
    """Write closed stream trips and refresh reporting.v_trips."""
    await conn.executemany(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time,"
        " distance_km, duration_s, max_speed_kmh, driver_name, source)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'stream')",
        trips,
    )
    await conn.execute("SELECT reporting.refresh_v_trips()")


async def add_live(conn, *rows) -> None:
    """Write latest fixes ``(imei, minutes_ago, speed_kmh, acc_on)``."""
    await conn.executemany(
        "INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng, speed_kmh,"
        " acc_on, pos_type, source, origin, received_at)"
        " VALUES ($1, now() - make_interval(mins => $2), -1.28, 36.82, $3, $4,"
        " 'GPS', 'poll', 'jimi.user.device.location.list', now())",
        rows,
    )


async def add_open_trip(
    conn, trip_id: str, imei: str, start: datetime, seen: datetime, driver=None
) -> None:
    """Write a stream trip still open, the vehicle's latest fix ``seen``, and
    refresh reporting.v_trips: the trip then runs from ``start`` to ``seen``."""
    await conn.execute(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, distance_km,"
        " max_speed_kmh, driver_name, source)"
        " VALUES ($1, $2, $3, 15.0, 80, $4, 'stream')",
        trip_id,
        imei,
        start,
        driver,
    )
    await conn.execute(
        "INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng, speed_kmh,"
        " acc_on, pos_type, source, origin, received_at)"
        " VALUES ($1, $2, -1.28, 36.82, 50, true, 'GPS', 'push', 'pushgps', $2)",
        imei,
        seen,
    )
    await conn.execute("SELECT reporting.refresh_v_trips()")


async def test_fleet_today_counts_the_fleet_zones_day(db):
    midnight = await local_midnight(db)
    day = timedelta(days=1)
    await add_devices(
        db,
        (V1, "KCA 100A", "Alice Wanjiru", "Dairy", "Nairobi", True),
        (V2, "KBZ 200B", None, None, None, None),
        (V3, "KDA 300C", None, None, None, False),
    )
    await add_trips(
        db,
        trip("late", V1, midnight - timedelta(minutes=10), 5, 9.0, 70),
        trip("first", V1, midnight, 60, 40.5, 90),
        trip("second", V1, midnight + timedelta(hours=6), 30, 12.25, 60),
        trip("off", V3, midnight + timedelta(hours=1), 30, 5.0),
    )
    await db.executemany(
        "INSERT INTO tracksolid.alarms (imei, alarm_type, alarm_time)"
        " VALUES ($1, $2, $3)",
        [
            (V1, "3", midnight - timedelta(seconds=1)),
            (V1, "3", midnight),
            (V1, "128", midnight + timedelta(hours=2, minutes=59)),
            (V1, "3", midnight + day),
            (V2, "3", midnight + day - timedelta(seconds=1)),
            (V3, "3", midnight + timedelta(hours=1)),
        ],
    )

    rows = await in_every_zone(
        db, "SELECT * FROM tracksolid.v_fleet_today ORDER BY imei"
    )

    # The drive that began ten minutes before midnight belongs to yesterday; the
    # alarms of 00:00:00 and 23:59:59 local are today's, their neighbours not.
    assert rows == [
        {
            "imei": V1,
            "vehicle_number": "KCA 100A",
            "driver_name": "Alice Wanjiru",
            "cost_centre": "Dairy",
            "city": "Nairobi",
            "trips": 2,
            "trip_km": Decimal("52.75"),
            "driving_hours": Decimal("1.50"),
            "first_trip_start": midnight,
            "last_trip_end": midnight + timedelta(hours=6, minutes=30),
            "max_speed_kmh": 90.0,
            "alarms": 2,
        },
        {
            "imei": V2,
            "vehicle_number": "KBZ 200B",
            "driver_name": None,
            "cost_centre": None,
            "city": None,
            "trips": 0,
            "trip_km": Decimal("0.00"),
            "driving_hours": Decimal("0.00"),
            "first_trip_start": None,
            "last_trip_end": None,
            "max_speed_kmh": None,
            "alarms": 1,
        },
    ]


async def test_trips_today_starts_and_ends_at_local_midnight(db):
    midnight = await local_midnight(db)
    second = timedelta(seconds=1)
    # One vehicle each: a vehicle's overlapping trips would hide one another.
    await add_trips(
        db,
        trip("before", V1, midnight - second, 1, 0.5),
        trip("first", V2, midnight, 1, 0.5),
        trip("last", V3, midnight + timedelta(days=1) - second, 1, 0.5),
        trip("after", V4, midnight + timedelta(days=1), 1, 0.5),
    )

    rows = await in_every_zone(
        db, "SELECT trip_id FROM reporting.v_trips_today ORDER BY start_time"
    )

    assert [row["trip_id"] for row in rows] == ["first", "last"]


async def test_fleet_today_ends_an_open_trip_where_it_has_got_to(db):
    midnight = await local_midnight(db)
    await add_devices(db, (V1, "KCA 100A", None, None, None, True))
    await add_trips(db, trip("done", V1, midnight + timedelta(hours=1), 30, 20.0))
    # Out since 06:00 and last seen at 07:15, later than any closed trip's end.
    await add_open_trip(
        db, "open", V1, midnight + timedelta(hours=6), midnight + timedelta(hours=7.25)
    )

    rows = await in_every_zone(
        db,
        "SELECT trips, driving_hours, last_trip_end FROM tracksolid.v_fleet_today",
    )

    assert rows == [
        {
            "trips": 2,
            "driving_hours": Decimal("1.75"),
            "last_trip_end": midnight + timedelta(hours=7, minutes=15),
        }
    ]


async def seed_working_days(conn) -> datetime:
    """Seed two drivers' days around today; return today's local midnight."""
    midnight = await local_midnight(conn)
    hours = timedelta(hours=1)
    days = timedelta(days=1)
    await add_devices(
        conn,
        (V1, "KCA 100A", "Alice Wanjiru", None, None, True),
        (V2, "KBZ 200B", "Brian Otieno", None, None, True),
        (V3, "KDA 300C", "  ", None, None, True),
    )
    await add_trips(
        conn,
        # Alice today: 07:45 to 08:15 and 16:00 to 17:30 local.
        trip("a1", V1, midnight + 7.75 * hours, 30, 20.0),
        trip("a2", V1, midnight + 16 * hours, 90, 60.0),
        # Brian yesterday from 08:20, his last drive running past midnight.
        trip("b1", V2, midnight - days + 8 * hours + timedelta(minutes=20), 40, 30.0),
        trip("b2", V2, midnight - timedelta(minutes=5), 20, 10.0),
        # Alice 30 and 31 days ago; a nameless driver today.
        trip("a30", V1, midnight - 30 * days + 8 * hours, 60, 40.0),
        trip("a31", V1, midnight - 31 * days + 6 * hours, 60, 40.0),
        trip("x", V3, midnight + 9 * hours, 10, 3.0),
    )
    return midnight


async def test_driver_clock_today_is_who_works_today(db):
    midnight = await seed_working_days(db)

    rows = await in_every_zone(db, "SELECT * FROM tracksolid.v_driver_clock_today")

    assert rows == [
        {
            "day": midnight.astimezone(FLEET_ZONE).date(),
            "driver_name": "Alice Wanjiru",
            "clock_in": midnight + timedelta(hours=7, minutes=45),
            "clock_out": midnight + timedelta(hours=17, minutes=30),
            "on_duty_hours": Decimal("9.75"),
            "driving_hours": Decimal("2.00"),
            "trips": 2,
        }
    ]


async def test_driver_clock_out_is_where_an_open_trip_has_got_to(db):
    await add_devices(db, (V1, "KCA 100A", "Alice Wanjiru", None, None, True))
    await add_trips(db, trip("a1", V1, local("2026-03-10", "07:45"), 30, 20.0))
    # Out since 16:00, last seen at 17:10: still driving when the view is read.
    await add_open_trip(
        db, "a2", V1, local("2026-03-10", "16:00"), local("2026-03-10", "17:10")
    )

    rows = await in_every_zone(db, "SELECT * FROM tracksolid.v_driver_clock_daily")

    # Clock-out is no earlier than the driving counted: 30 min and 70 min.
    assert rows == [
        {
            "day": date(2026, 3, 10),
            "driver_name": "Alice Wanjiru",
            "clock_in": local("2026-03-10", "07:45"),
            "clock_out": local("2026-03-10", "17:10"),
            "on_duty_hours": Decimal("9.42"),
            "driving_hours": Decimal("1.67"),
            "trips": 2,
        }
    ]


async def test_driver_clock_attendance_judges_local_clock_in(db):
    midnight = await seed_working_days(db)
    today = midnight.astimezone(FLEET_ZONE).date()
    query = (
        "SELECT day, driver_name, clock_in_local, on_time, minutes_late,"
        " on_duty_hours, driving_hours"
        " FROM tracksolid.v_driver_clock_attendance ORDER BY day, driver_name"
    )

    rows = await in_every_zone(db, query)
    await db.execute(
        "INSERT INTO tracksolid.settings (key, value)"
        " VALUES ('shift_start_local', '07:30')"
    )
    earlier = await in_every_zone(db, query)

    # Brian's day ends at 00:15 the next morning: 15 h 55 min on duty.
    assert [tuple(row.values()) for row in rows] == [
        (today - timedelta(days=30), "Alice Wanjiru", time(8), True, 0, 1, 1),
        (
            today - timedelta(days=1),
            "Brian Otieno",
            time(8, 20),
            False,
            20,
            Decimal("15.92"),
            Decimal("1.00"),
        ),
        (today, "Alice Wanjiru", time(7, 45), True, 0, Decimal("9.75"), 2),
    ]
    assert [(row["on_time"], row["minutes_late"]) for row in earlier] == [
        (False, 30),
        (False, 50),
        (False, 15),
    ]


async def test_driver_aggregates_split_at_local_midnight(db):
    await add_devices(
        db,
        (V1, "KCA 100A", "Alice Wanjiru", None, None, True),
        (V2, "KBZ 200B", None, None, None, True),
    )
    await add_trips(
        db,
        trip("m", V1, local("2026-03-10", "08:00"), 60, 50.0, 80),
        # Alice takes V2, whose registry names no driver, for a late run.
        trip("n", V2, local("2026-03-10", "23:30"), 30, 20.0, 100, "Alice Wanjiru"),
        trip("o", V1, local("2026-03-11"), 30, 10.0, 60),
        trip("p", V2, local("2026-03-11", "09:00"), 30, 10.0, 60, " "),
    )

    rows = await in_every_zone(
        db, "SELECT * FROM tracksolid.v_driver_aggregates_daily ORDER BY day"
    )

    assert [tuple(row.values()) for row in rows] == [
        (date(2026, 3, 10), "Alice Wanjiru", 2, 2, 70, 1.5, 100, Decimal("46.7")),
        (date(2026, 3, 11), "Alice Wanjiru", 1, 1, 10, 0.5, 60, 20),
    ]


async def test_fleet_trace_is_two_hours_of_satellite_fixes(db):
    now = await db_now(db)
    await add_devices(db, (V1, "KCA 100A", "Alice Wanjiru", None, None, True))
    await db.executemany(
        "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng,"
        " speed_kmh, pos_type, source, origin, received_at)"
        " VALUES ($1, now() - make_interval(mins => $2), -1.28, 36.82, 30, $3,"
        " 'poll', 'jimi.device.track.list', now())",
        [
            (V1, 121, "GPS"),
            (V1, 119, "GPS"),
            (V1, 10, "LBS"),
            (V1, 5, "WIFI"),
            (V1, 1, "UNKNOWN"),
            (V4, 30, "GPS"),
        ],
    )

    rows = await in_every_zone(
        db,
        "SELECT imei, vehicle_number, driver_name, gps_time"
        " FROM tracksolid.v_fleet_trace ORDER BY gps_time",
    )

    # A tracker missing from the registry still draws its trail, unnamed.
    assert [tuple(row.values()) for row in rows] == [
        (V1, "KCA 100A", "Alice Wanjiru", now - timedelta(minutes=119)),
        (V4, None, None, now - timedelta(minutes=30)),
        (V1, "KCA 100A", "Alice Wanjiru", now - timedelta(minutes=1)),
    ]


LOCATIONS = "jimi.user.device.location.list"
TRACKS = "jimi.device.track.list"
DEVICES = "jimi.user.device.list"
ALARMS = "jimi.device.alarm.list"
PARKING = "jimi.open.platform.report.parking"
MILEAGE = "jimi.device.track.mileage"


def ingestion_calls() -> list[tuple]:
    """Return ``(method, seconds_ago, records, duration_ms, result_code, error)``."""
    calls = []
    # Positions every minute for 90 minutes, the newest 30 s ago; two failures,
    # one of them within the last hour.
    for k in range(90):
        code = 1004 if k == 70 else 0
        error = "timed out" if k == 3 else None
        calls.append((LOCATIONS, 60 * k + 30, 10, 100 + k, code, error))
    # Histories in bursts of three calls every 30 minutes, which stopped 3 h ago.
    # The device list in the same bursts every hour, the last 70 minutes ago.
    for cycle in range(10):
        for second in range(3):
            calls.append((TRACKS, 3 * 3600 + 1800 * cycle - second, 5, 200, 0, None))
            if cycle < 6:
                calls.append((DEVICES, 4200 + 3600 * cycle - second, 40, 300, 0, None))
    # Alarms polled every minute, refused for the last 20 minutes.
    for k in range(60):
        calls.append((ALARMS, 60 * k + 10, 0, 50, 1001 if k < 20 else 0, None))
    # One call 10 minutes ago; one 8 days ago, out of sight.
    calls.append((PARKING, 600, 2, 400, 0, None))
    calls.append((MILEAGE, 8 * 86400, 7, 400, 0, None))
    return calls


async def test_ingestion_health_shows_a_stalled_method(db):
    now = await db_now(db)
    await db.executemany(
        "INSERT INTO tracksolid.ingestion_log (called_at, method, record_count,"
        " duration_ms, result_code, error)"
        " VALUES (now() - make_interval(secs => $2), $1, $3, $4, $5, $6)",
        ingestion_calls(),
    )
    await add_live(db, (V1, 5, 0.0, False), (V2, 1, 40.0, True))
    await db.execute("UPDATE tracksolid.live_positions SET received_at = gps_time")

    rows = await in_every_zone(
        db, 'SELECT * FROM tracksolid.v_ingestion_health ORDER BY method COLLATE "C"'
    )

    def ago(seconds: int) -> datetime:
        return now - timedelta(seconds=seconds)

    # method, calls, failures and records in the last hour, last call, last
    # success, seconds since the last call, stale after (three usual intervals,
    # at least 15 minutes), status.
    expected = [
        (ALARMS, 60, 20, 0, ago(10), ago(1210), 10, 900, "failing"),
        (TRACKS, 0, 0, 0, ago(10798), ago(10798), 10798, 3 * 1798, "stale"),
        (PARKING, 1, 0, 2, ago(600), ago(600), 600, 900, "ok"),
        (DEVICES, 0, 0, 0, ago(4198), ago(4198), 4198, 3 * 3598, "ok"),
        (LOCATIONS, 60, 1, 600, ago(30), ago(30), 30, 900, "ok"),
    ]
    got = [
        (
            row["method"],
            row["calls_last_hour"],
            row["failed_last_hour"],
            row["records_last_hour"],
            row["last_call_at"],
            row["last_success_at"],
            row["seconds_since_last_call"],
            row["stale_after_seconds"],
            row["status"],
        )
        for row in rows
    ]
    assert got == expected
    assert {row["last_fix_received_at"] for row in rows} == {ago(60)}
    p95 = {row["method"]: row["p95_ms"] for row in rows}
    # Durations 100..159 ms in the last hour: 95 % of the way is 156.05 ms.
    assert p95[LOCATIONS] == pytest.approx(156.05)
    assert p95[TRACKS] is None


async def test_filter_views_list_enabled_vehicles_and_named_drivers(db):
    await add_devices(
        db,
        (V1, "kca-100a", "Alice Wanjiru", "Dairy", "Nairobi", True),
        (V2, "KBZ 200B", "Brian Otieno", "Bakery", "Mombasa", None),
        (V3, "KDA 300C", "  ", "", "  ", True),
        (V4, "KIA 400D", "Dan Kip", "Dairy", "Nairobi", False),
    )
    await add_trips(
        db,
        trip("t1", V1, local("2026-03-10", "08:00"), 30, 10.0),
        trip("t2", V1, local("2026-03-11", "08:00"), 30, 10.0),
        trip("t3", V2, local("2026-03-10", "09:00"), 30, 10.0, driver="Carol Achieng"),
        trip("t4", V4, local("2026-03-12", "07:00"), 30, 10.0),
    )

    vehicles = await in_every_zone(
        db,
        "SELECT imei, vehicle_number_norm, trips, last_trip_at"
        " FROM reporting.v_filter_vehicles ORDER BY imei",
    )
    drivers = await in_every_zone(
        db, "SELECT * FROM reporting.v_filter_drivers ORDER BY driver_name"
    )
    cities = await in_every_zone(
        db, "SELECT * FROM reporting.v_filter_cities ORDER BY city"
    )

    assert [tuple(row.values()) for row in vehicles] == [
        (V1, "KCA100A", 2, local("2026-03-11", "08:00")),
        (V2, "KBZ200B", 1, local("2026-03-10", "09:00")),
        (V3, "KDA300C", 0, None),
    ]
    # Brian is assigned but has not driven; Carol drove V2 under her own name;
    # Dan's only vehicle is disabled, but his trip still names him.
    assert [tuple(row.values()) for row in drivers] == [
        ("Alice Wanjiru", 1, 2, local("2026-03-11", "08:00")),
        ("Brian Otieno", 1, 0, None),
        ("Carol Achieng", 1, 1, local("2026-03-10", "09:00")),
        ("Dan Kip", 1, 1, local("2026-03-12", "07:00")),
    ]
    assert [tuple(row.values()) for row in cities] == [("Mombasa", 1), ("Nairobi", 1)]


async def seed_month_ends(conn) -> None:
    """Seed trips either side of local month and week boundaries.

    2026-03-01 is a Sunday: its last minute still belongs to the week of
    2026-02-23, and 2026-03-02 00:00 local begins the next week.
    """
    await add_devices(
        conn,
        (V1, "KCA 100A", "Alice Wanjiru", "Dairy", None, True),
        (V2, "KBZ 200B", "Brian Otieno", None, None, True),
        (V3, "KDA 300C", "Carol Achieng", "Bakery", None, True),
    )
    await add_trips(
        conn,
        trip("a", V1, local("2026-02-28", "23:59"), 1, 10.0, 50),
        trip("b", V1, local("2026-03-01"), 60, 20.0, 70),
        trip("c", V2, local("2026-03-01", "23:59"), 30, 5.0, 40),
        trip("d", V3, local("2026-03-02"), 90, 30.0, 90),
        trip("e", V1, local("2026-03-31", "23:59"), 10, 2.0, 30),
        trip("f", V2, local("2026-04-01"), 20, 4.0, 45),
    )


async def test_monthly_summary_counts_local_months(db):
    await seed_month_ends(db)

    rows = await in_every_zone(
        db, "SELECT * FROM reporting.v_monthly_summary ORDER BY month_start"
    )

    # month, trips, vehicles, drivers, km, hours, top speed, average trip km.
    assert [tuple(row.values()) for row in rows] == [
        (date(2026, 2, 1), 1, 1, 1, 10, Decimal("0.02"), 50, 10),
        (date(2026, 3, 1), 4, 3, 3, 57, Decimal("3.17"), 90, Decimal("14.25")),
        (date(2026, 4, 1), 1, 1, 1, 4, Decimal("0.33"), 45, 4),
    ]


async def test_cost_centre_summaries_split_local_months_and_weeks(db):
    await seed_month_ends(db)

    monthly = await in_every_zone(
        db,
        "SELECT month_start, cost_centre, trips, distance_km"
        " FROM reporting.v_monthly_summary_cost_centre"
        " ORDER BY month_start, cost_centre NULLS LAST",
    )
    weekly = await in_every_zone(
        db,
        "SELECT week_start, cost_centre, trips, distance_km"
        " FROM reporting.v_weekly_summary_cost_centre"
        " ORDER BY week_start, cost_centre NULLS LAST",
    )

    assert [tuple(row.values()) for row in monthly] == [
        (date(2026, 2, 1), "Dairy", 1, 10),
        (date(2026, 3, 1), "Bakery", 1, 30),
        (date(2026, 3, 1), "Dairy", 2, 22),
        (date(2026, 3, 1), None, 1, 5),
        (date(2026, 4, 1), None, 1, 4),
    ]
    assert [tuple(row.values()) for row in weekly] == [
        (date(2026, 2, 23), "Dairy", 2, 30),
        (date(2026, 2, 23), None, 1, 5),
        (date(2026, 3, 2), "Bakery", 1, 30),
        (date(2026, 3, 30), "Dairy", 1, 2),
        (date(2026, 3, 30), None, 1, 4),
    ]


async def test_fleet_status_counts_vehicles_that_never_reported(db):
    await add_devices(
        db,
        ("moving", None, None, None, None, True),
        ("idle", None, None, None, None, None),
        ("parked", None, None, None, None, True),
        ("offline", None, None, None, None, True),
        ("silent", None, None, None, None, True),
        ("new", None, None, None, None, None),
        ("retired", None, None, None, None, False),
        ("sold", None, None, None, None, False),
    )
    await add_live(
        db,
        ("moving", 1, 40.0, True),
        ("idle", 2, 0.0, True),
        ("parked", 3, 0.0, False),
        ("offline", 61, 40.0, True),
        ("sold", 1, 50.0, True),
        ("unregistered", 4, 1.0, None),
    )

    rows = await in_every_zone(
        db, "SELECT status, vehicles FROM tracksolid.v_fleet_status ORDER BY status"
    )

    # Six enabled vehicles and one tracker reporting before it was registered.
    assert {row["status"]: row["vehicles"] for row in rows} == {
        "moving": 1,
        "idle": 1,
        "parked": 2,
        "offline": 1,
        "never_reported": 2,
    }

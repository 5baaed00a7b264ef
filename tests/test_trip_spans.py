"""Open trips in reporting.v_trips: each shows in every date range it overlaps, once.

An open trip (end_time null: a drive in progress) spans from its start to the
device's latest fix in tracksolid.live_positions, no further than the next trip
its source started for the device, and at least one second. The rows are what
the trip sink and the position sink write: uuid trip ids from
processors.trips.trip_id, 'stream' for the derived worker's trips, the latest
fix upserted per device. The fleet zone is Africa/Nairobi (UTC+3), so 22:00
local is 19:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from processors.trips import DERIVED, PLATFORM, trip_id

IMEI = "862476051234567"
# The drive starts at 22:00 local on 2026-03-10.
START = datetime(2026, 3, 10, 19, tzinfo=UTC)
TRIPS_QUERY = (
    "SELECT trip_id FROM reporting.fn_trips_for_map(NULL, NULL, NULL, NULL, "
    "$1::timestamp, $2::timestamp)"
)


def local(text: str) -> datetime:
    """Return a Nairobi wall-clock time, as fn_trips_for_map takes its bounds."""
    return datetime.fromisoformat(text)


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        "INSERT INTO tracksolid.devices (imei, vehicle_number, driver_name) "
        "VALUES ($1, 'KDD 404X', 'Faith Njeri')",
        IMEI,
    )
    yield conn
    await conn.close()


async def add_trip(
    conn, start: datetime, end: datetime | None, source: str, written: datetime
) -> str:
    """Insert a trip as the trip sink writes it; return its trip_id."""
    kind = DERIVED if source == "stream" else PLATFORM
    tid = trip_id(IMEI, int(start.timestamp() * 1000), kind)
    duration = None if end is None else int((end - start).total_seconds())
    await conn.execute(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time, "
        "start_lat, start_lng, distance_km, duration_s, source, distance_source, "
        "updated_at) VALUES ($1, $2, $3, $4, -1.2921, 36.8219, $5, $6, $7, $8, $9)",
        tid,
        IMEI,
        start,
        end,
        None if end is None else 12.5,
        duration,
        source,
        None if end is None else ("platform" if kind == PLATFORM else "gps"),
        written,
    )
    return tid


async def latest_fix(conn, gps_time: datetime) -> None:
    """Upsert the device's latest fix as the position sink does."""
    await conn.execute(
        "INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng, speed_kmh, "
        "acc_on, pos_type, source, origin, received_at) "
        "VALUES ($1, $2, -1.25, 36.85, 42, true, 'GPS', 'push', 'pushgps', $2) "
        "ON CONFLICT (imei) DO UPDATE SET gps_time = EXCLUDED.gps_time "
        "WHERE EXCLUDED.gps_time > tracksolid.live_positions.gps_time",
        IMEI,
        gps_time,
    )


async def visible(conn, lo: str, hi: str) -> list[str]:
    rows = await conn.fetch(TRIPS_QUERY, local(lo), local(hi))
    return [row["trip_id"] for row in rows]


async def refresh(conn) -> None:
    await conn.execute("SELECT reporting.refresh_v_trips()")


async def test_open_trip_shows_in_every_range_up_to_the_latest_fix(db):
    open_id = await add_trip(db, START, None, "stream", START + timedelta(minutes=1))
    # Still driving at 00:40 local, past midnight.
    await latest_fix(db, START + timedelta(hours=2, minutes=40))
    await refresh(db)

    row = await db.fetchrow(
        "SELECT end_time, span_end, duration_s, trip_date FROM reporting.v_trips"
    )

    assert await visible(db, "2026-03-10 22:00", "2026-03-10 23:00") == [open_id]
    assert await visible(db, "2026-03-10 23:00", "2026-03-11 00:00") == [open_id]
    assert await visible(db, "2026-03-11 00:00", "2026-03-12 00:00") == [open_id]
    assert await visible(db, "2026-03-11 00:41", "2026-03-12 00:00") == []
    assert await visible(db, "2026-03-09 00:00", "2026-03-13 00:00") == [open_id]
    assert row["end_time"] is None
    assert row["span_end"] == START + timedelta(hours=2, minutes=40)
    assert row["duration_s"] == 2 * 3600 + 40 * 60
    assert str(row["trip_date"]) == "2026-03-10"


async def test_open_trip_grows_with_each_refresh_while_the_drive_goes_on(db):
    open_id = await add_trip(db, START, None, "stream", START)
    await latest_fix(db, START + timedelta(minutes=20))
    await refresh(db)
    before = await visible(db, "2026-03-10 23:00", "2026-03-11 00:00")

    await latest_fix(db, START + timedelta(hours=1, minutes=30))
    await refresh(db)
    after = await visible(db, "2026-03-10 23:00", "2026-03-11 00:00")

    assert before == []
    assert after == [open_id]


async def test_open_trip_of_a_silent_device_ends_at_its_last_fix(db):
    open_id = await add_trip(db, START, None, "stream", START)
    # The device went silent at 22:30 local and never reported again.
    await latest_fix(db, START + timedelta(minutes=30))
    await refresh(db)

    span_end = await db.fetchval("SELECT span_end FROM reporting.v_trips")

    assert span_end == START + timedelta(minutes=30)
    assert await visible(db, "2026-03-10 22:29", "2026-03-10 22:31") == [open_id]
    assert await visible(db, "2026-03-10 22:31", "2026-03-12 00:00") == []


@pytest.mark.parametrize(
    "fix_offset", [None, timedelta(minutes=-5)], ids=["no-fix", "fix-before-start"]
)
async def test_open_trip_without_a_later_fix_spans_one_second(db, fix_offset):
    open_id = await add_trip(db, START, None, "stream", START)
    if fix_offset is not None:
        await latest_fix(db, START + fix_offset)
    await refresh(db)

    row = await db.fetchrow("SELECT span_end, duration_s FROM reporting.v_trips")

    assert row["span_end"] == START + timedelta(seconds=1)
    assert row["duration_s"] == 0
    assert await visible(db, "2026-03-10 22:00", "2026-03-10 22:00:01") == [open_id]
    assert await visible(db, "2026-03-10 22:00:01", "2026-03-11 00:00") == []


async def test_platform_trip_hides_the_open_stream_trip_of_the_same_drive(db):
    # The stream opened the drive at 22:00; the platform reported it closed,
    # starting a minute later, while the device still reports.
    await add_trip(db, START, None, "stream", START + timedelta(minutes=1))
    platform_id = await add_trip(
        db,
        START + timedelta(minutes=1),
        START + timedelta(hours=1, minutes=20),
        "platform",
        START + timedelta(hours=1, minutes=25),
    )
    await latest_fix(db, START + timedelta(hours=1, minutes=30))
    await refresh(db)

    assert await visible(db, "2026-03-10 22:00", "2026-03-11 00:00") == [platform_id]
    assert await visible(db, "2026-03-10 00:00", "2026-03-12 00:00") == [platform_id]


async def test_open_trip_that_ranks_higher_hides_what_overlaps_its_driven_part(db):
    # The overlap rule reads the open trip's span on the hiding side too.
    open_id = await add_trip(db, START, None, "platform", START + timedelta(hours=2))
    await add_trip(
        db,
        START + timedelta(minutes=30),
        START + timedelta(hours=1, minutes=10),
        "stream",
        START + timedelta(hours=1, minutes=15),
    )
    await latest_fix(db, START + timedelta(hours=1, minutes=30))
    await refresh(db)

    assert await visible(db, "2026-03-10 22:00", "2026-03-11 00:00") == [open_id]


async def test_trip_left_open_ends_where_its_source_started_the_next(db):
    # A drive whose close was never written, then a later drive of the same
    # source the next morning; the device reports until noon.
    stuck_id = await add_trip(db, START, None, "stream", START + timedelta(minutes=5))
    next_start = datetime(2026, 3, 11, 5, tzinfo=UTC)
    next_id = await add_trip(
        db, next_start, next_start + timedelta(hours=1), "stream", next_start
    )
    await latest_fix(db, datetime(2026, 3, 11, 9, tzinfo=UTC))
    await refresh(db)

    spans = dict(await db.fetch("SELECT trip_id, span_end FROM reporting.v_trips"))

    assert spans[stuck_id] == next_start
    assert await visible(db, "2026-03-10 00:00", "2026-03-11 00:00") == [stuck_id]
    assert await visible(db, "2026-03-11 08:00", "2026-03-11 09:00") == [next_id]
    assert await visible(db, "2026-03-10 00:00", "2026-03-12 00:00") == [
        stuck_id,
        next_id,
    ]


async def test_closed_trips_keep_their_span_and_duration(db):
    end = START + timedelta(minutes=45)
    closed_id = await add_trip(db, START, end, "stream", end)
    await latest_fix(db, START + timedelta(hours=5))
    await refresh(db)

    row = await db.fetchrow("SELECT span_end, duration_s FROM reporting.v_trips")

    assert row["span_end"] == end
    assert row["duration_s"] == 45 * 60
    assert await visible(db, "2026-03-10 22:45", "2026-03-11 00:00") == []
    assert await visible(db, "2026-03-10 22:44", "2026-03-11 00:00") == [closed_id]


async def test_trip_span_is_inlined_into_the_queries_that_use_it(db):
    # Called per pair of trips by the overlap rule; a call each time made the
    # refresh several times slower.
    plan = await db.fetch(
        "EXPLAIN VERBOSE SELECT tracksolid.trip_span(start_time, end_time) "
        "FROM tracksolid.trips"
    )

    text = "\n".join(row[0] for row in plan)
    assert "tstzrange(" in text
    assert "trip_span" not in text


async def test_a_long_trip_hides_every_trip_within_it_across_gaps(db):
    # A platform trip of 22:00-02:00 local spans three stream trips with gaps
    # between them; a stream trip after it, and one before it, stay.
    hour = timedelta(hours=1)
    written = START + 10 * hour
    long_id = await add_trip(db, START, START + 4 * hour, "platform", written)
    inside = [
        await add_trip(
            db,
            START + k * hour,
            START + k * hour + 600 * timedelta(seconds=1),
            "stream",
            written,
        )
        for k in (0, 1, 3)
    ]
    before = await add_trip(db, START - 2 * hour, START - hour, "stream", written)
    touching = await add_trip(db, START + 4 * hour, START + 5 * hour, "stream", written)
    # Two platform copies of one drive, a second apart: the later written wins.
    copy = await add_trip(db, START + 6 * hour, START + 7 * hour, "platform", written)
    newer = await add_trip(
        db,
        START + 6 * hour + timedelta(seconds=1),
        START + 7 * hour,
        "platform",
        written + hour,
    )
    await refresh(db)

    shown = set(await visible(db, "2026-03-09 00:00", "2026-03-13 00:00"))

    assert shown == {long_id, before, touching, newer}
    assert not shown & {*inside, copy}

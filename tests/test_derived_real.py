"""Derived trips, distance and daily mileage on real recordings and real messiness.

The recordings come from ``fakeplatform.traces``: the Višnjan GPX car and the
three Denver drives (no ignition, motion decides), and the two trucks replayed
the way the pipeline sees them, as /pushgps records cleaned by
``processors.clean`` with ignition carried on each fix. The other tests state
one rule each about a kind of fault real devices produce (repeated fix times,
clock jumps, devices switched off for days, local midnight, odometer resets),
and the last ones hold the stream's daily mileage against the database's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from fakeplatform.pusher import gps_record
from fakeplatform.traces import TRACES_DIR, Delivery, load_traces
from fleetstream.settings import Settings
from processors.clean import CleanContext, Raw, RejectedRecord, clean_position
from processors.derived import DerivedConfig, DeviceDerivation
from processors.distance import haversine_m
from processors.mileage import DayLedger, local_day

NAIROBI = "Africa/Nairobi"
# The Višnjan drive starts here (its GPX times); all its windows are UTC.
GPX_DAY = "2020-12-18"
TRUCK_FILES = {
    "truck-A": ("truck-A_2018-05-03_part1.json", "truck-A_2018-05-03_part2.json"),
    "truck-B": ("truck-B_2018-05-04.json",),
}


def utc(text: str) -> int:
    """Return epoch ms of a UTC time like 2018-05-03 15:09:57."""
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def settings_with(**overrides) -> Settings:
    return Settings(environment="test", fleet_timezone=NAIROBI, **overrides)


def position(imei: str, t: int, lat: float, lng: float, **extra) -> dict:
    """Return a decoded Position record with the fields derivation reads."""
    return {
        "imei": imei,
        "gps_time": t,
        "lat": lat,
        "lng": lng,
        "speed_kmh": extra.get("speed"),
        "acc_on": extra.get("acc"),
        "odometer_m": extra.get("odometer"),
        "pos_type": extra.get("pos_type", "GPS"),
    }


def derive(settings: Settings, imei: str, positions: list[dict]):
    """Run positions through one device derivation, as replayed (no wall gaps).

    Return the device and its final trips in start order. Silence closes the
    trip still open at the end, as the worker's wall clock would.
    """
    config = DerivedConfig.from_settings(settings)
    device = DeviceDerivation(imei, config)
    trips = {}
    for record in positions:
        changes = device.apply(config.fix(record), 1_000)
        if changes:
            trips.update({t["trip_id"]: t for t in changes.trips})
    late = device.expire(10**13)
    if late:
        trips.update({t["trip_id"]: t for t in late.trips})
    return device, sorted(trips.values(), key=lambda t: t["start_time"])


def trace_positions(name: str, start_ms: int) -> tuple[str, list[dict]]:
    """Return the IMEI and positions of a GPX or Denver trace, as the loader has them.

    Speeds are the loader's, derived from consecutive points: these recordings
    carry none, and the fake platform sends exactly these.
    """
    trace = load_traces([name])[0]
    return trace.imei, [
        position(
            trace.imei,
            start_ms + int(p.offset_s * 1000),
            p.lat,
            p.lng,
            speed=p.speed_kmh,
        )
        for p in trace.points
    ]


def path_m(positions: list[dict], start: int, end: int) -> float:
    """Return the plain haversine length of the fixes between two times."""
    inside = [p for p in positions if start <= p["gps_time"] <= end]
    return sum(
        haversine_m(a["lat"], a["lng"], b["lat"], b["lng"])
        for a, b in zip(inside, inside[1:], strict=False)
    )


# The Višnjan car ------------------------------------------------------------------

# Read off the GPX: the logger records a point a second while the car moves and
# every 10-50 s while it stands. It stands until 06:16:43, brakes to a stand by
# 06:19:56, waits until 06:21:37 (with braking and starting about two minutes)
# and parks at 06:22:41, standing from 06:22:45 to the end.
GPX_START = utc(f"{GPX_DAY} 06:15:50")
GPX_DEPART = utc(f"{GPX_DAY} 06:16:43")
GPX_STOP = (utc(f"{GPX_DAY} 06:19:56"), utc(f"{GPX_DAY} 06:21:37"))
GPX_PARK = utc(f"{GPX_DAY} 06:22:41")
GPX_END = utc(f"{GPX_DAY} 06:24:24")


def gpx_moving_path_m(positions: list[dict]) -> float:
    """Return the length driven: departure to parking, less the mid-drive stop."""
    return path_m(positions, GPX_DEPART, GPX_PARK) - path_m(
        positions, GPX_STOP[0], GPX_STOP[1]
    )


def test_gpx_car_is_one_trip_through_its_two_minute_stop():
    imei, positions = trace_positions("visnjan-car", GPX_START)
    moving = gpx_moving_path_m(positions)
    assert 2_600 < moving < 2_750, "a drive of about 2.7 km"

    device, trips = derive(settings_with(), imei, positions)

    assert len(trips) == 1
    trip = trips[0]
    # Starts with the first fix that moves, ends with the first that stands.
    assert GPX_DEPART < trip["start_time"] <= GPX_DEPART + 15_000
    assert GPX_PARK < trip["end_time"] <= GPX_PARK + 5_000
    assert trip["distance_source"] == "gps"
    assert trip["distance_m"] == pytest.approx(moving, rel=0.01)


def test_gpx_car_stands_still_without_adding_distance():
    imei, positions = trace_positions("visnjan-car", GPX_START)
    recorded_jitter = path_m(positions, *GPX_STOP) + path_m(
        positions, GPX_PARK, GPX_END
    )
    assert recorded_jitter > 10, "the recording wanders while the car stands"

    device, _ = derive(settings_with(), imei, positions)

    assert device.track.distance_m(*GPX_STOP) == 0.0
    # From the first standing fix after parking to the end of the recording.
    assert device.track.distance_m(GPX_PARK + 4_000, GPX_END) == 0.0
    day = device.day_record(GPX_DAY, 0)
    # Before departure the loader derives 4.3 km/h from a 12 m wander over 10 s,
    # which no rule tells from a crawl across a yard; it stays within 1 %.
    assert day["gps_distance_m"] == pytest.approx(
        gpx_moving_path_m(positions), rel=0.01
    )


@pytest.mark.parametrize("stop_s", [60.0, 90.0])
def test_gpx_car_stop_splits_the_drive_below_a_two_minute_threshold(stop_s):
    imei, positions = trace_positions("visnjan-car", GPX_START)
    # Each half lasts under the default five minutes a trip needs, so that
    # threshold goes down with the stop threshold here.
    rules = settings_with(trip_min_stop_seconds=stop_s, trip_min_duration_seconds=30)

    _, trips = derive(rules, imei, positions)

    assert len(trips) == 2
    first, second = trips
    assert GPX_STOP[0] <= first["end_time"] <= GPX_STOP[0] + 20_000
    assert GPX_STOP[1] <= second["start_time"] <= GPX_STOP[1] + 5_000
    assert GPX_PARK < second["end_time"] <= GPX_PARK + 5_000
    total = first["distance_m"] + second["distance_m"]
    assert total == pytest.approx(gpx_moving_path_m(positions), rel=0.01)


# The Denver drives -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "km"), [("denver-1", 12.6), ("denver-2", 5.8), ("denver-3", 20.8)]
)
def test_denver_drive_is_one_trip_of_its_length(name, km):
    start = utc("2026-03-02 06:00:00")
    imei, positions = trace_positions(name, start)

    device, trips = derive(settings_with(), imei, positions)

    assert len(trips) == 1
    assert trips[0]["distance_m"] == pytest.approx(km * 1000, rel=0.01)
    day = device.day_record("2026-03-02", 0)
    assert day["gps_distance_m"] == pytest.approx(km * 1000, rel=0.01)
    # Every run of identical points (a stop: the file repeats the position
    # once a second) adds nothing, nor does the segment that enters it.
    runs = 0
    for a, b in zip(positions, positions[1:], strict=False):
        if (a["lat"], a["lng"]) == (b["lat"], b["lng"]):
            runs += 1
            assert device.track.distance_m(a["gps_time"], b["gps_time"]) == 0.0
    assert runs > 100


@pytest.mark.parametrize(
    ("name", "km"), [("visnjan-car", None), ("denver-1", 12.6), ("denver-3", 20.8)]
)
def test_drive_without_reported_speed_keeps_its_length(name, km):
    imei, positions = trace_positions(name, GPX_START)
    if km is None:
        km = gpx_moving_path_m(positions) / 1000
    speedless = [{**p, "speed_kmh": None} for p in positions]

    device, trips = derive(settings_with(), imei, speedless)

    assert len(trips) == 1
    assert trips[0]["distance_m"] == pytest.approx(km * 1000, rel=0.01)
    # Standing still is told by the steps alone: a wander of metres over tens
    # of seconds, or the same point again, adds nothing.
    if name == "visnjan-car":
        assert device.track.distance_m(*GPX_STOP) == 0.0
        assert device.track.distance_m(GPX_PARK + 4_000, GPX_END) == 0.0


# The trucks, as the pipeline sees them -------------------------------------------


def truck_raw(name: str) -> tuple[str, list[Raw], dict[str, list[int]]]:
    """Return a truck's IMEI, its /pushgps records in arrival order, its ignitions.

    The records carry ignition on each fix, as the device reports it; the
    recorded ignition events are only returned, as ground truth.
    """
    trace = load_traces([name])[0]
    events = []
    for file in TRUCK_FILES[name]:
        path = TRACES_DIR / "drvr-trucks-myanmar" / file
        events.extend(json.loads(path.read_text(encoding="utf-8")))
    start = min(
        datetime.fromisoformat(e["ev"]["pos"]["posTime"].replace("+0000", "+00:00"))
        for e in events
        if e["type"] == "vehicle-position"
    )
    deliveries = sorted(
        (
            Delivery(
                trace,
                p,
                start + timedelta(seconds=p.offset_s),
                start + timedelta(seconds=p.delivery_offset_s),
                0,
                False,
                False,
            )
            for p in trace.points
        ),
        key=lambda d: d.delivered_at,
    )
    records = [
        Raw(
            "push",
            "pushgps",
            int(d.delivered_at.timestamp() * 1000),
            trace.imei,
            gps_record(d),
        )
        for d in deliveries
    ]
    ignition = {"on": [], "off": []}
    for e in events:
        if e["type"] in ("vehicle-ign-on", "vehicle-ign-off"):
            moment = datetime.fromisoformat(e["ev"]["ts"].replace("+0000", "+00:00"))
            kind = "on" if e["type"] == "vehicle-ign-on" else "off"
            ignition[kind].append(int(moment.timestamp() * 1000))
    return trace.imei, records, ignition


def truck_pushes(name: str) -> tuple[str, list[dict], dict[str, list[int]]]:
    """Return a truck's IMEI, cleaned /pushgps positions in arrival order, ignitions."""
    imei, records, ignition = truck_raw(name)
    ctx = CleanContext.from_settings(settings_with())
    return imei, [clean_position(raw, ctx) for raw in records], ignition


@pytest.mark.parametrize(
    ("name", "ignition_on", "ignition_off"),
    [
        ("truck-A", "2018-05-03 15:09:57", "2018-05-03 16:53:49"),
        ("truck-B", "2018-05-04 03:55:35", "2018-05-04 05:02:22"),
    ],
)
def test_truck_trip_from_pushed_fixes_is_bounded_by_its_ignition(
    name, ignition_on, ignition_off
):
    imei, positions, ignition = truck_pushes(name)
    assert utc(ignition_on) == min(ignition["on"])
    assert utc(ignition_off) == max(ignition["off"])
    on_times = sorted(p["gps_time"] for p in positions if p["acc_on"])

    _, trips = derive(settings_with(), imei, positions)

    # One trip despite truck-A's 1 s ignition glitch, which no fix reports.
    assert len(trips) == 1
    trip = trips[0]
    # Positions alone cannot be more exact than the recording's first and last
    # fix with ignition on: truck-A logged none in the 40 s after ignition on
    # and the 60 s before ignition off, truck-B none in the 22 s after it.
    assert trip["start_time"] == on_times[0]
    assert trip["end_time"] == on_times[-1]
    assert 0 <= trip["start_time"] - utc(ignition_on) <= 40_000
    assert 0 <= utc(ignition_off) - trip["end_time"] <= 60_000


def test_truck_trip_ends_at_the_fix_reporting_ignition_off_not_at_the_next():
    imei, positions, ignition = truck_pushes("truck-B")
    last = max(positions, key=lambda p: p["gps_time"])
    off = utc("2018-05-04 05:02:22")
    # The fix a device sends when ignition goes off, then its next periodic fix
    # ten minutes later from the same yard.
    positions += [
        {**last, "gps_time": off, "acc_on": False, "speed_kmh": 0.0},
        {**last, "gps_time": off + 600_000, "acc_on": False, "speed_kmh": 0.0},
    ]

    _, trips = derive(settings_with(), imei, positions)

    assert [(t["start_time"], t["end_time"]) for t in trips] == [
        (utc("2018-05-04 03:55:57"), off)
    ]
    assert trips[0]["distance_source"] == "odometer"


# Kinds of messiness -----------------------------------------------------------------

IMEI = "864000000000009"
# About 1 km of longitude at the equator.
KM_LNG = 1000 / haversine_m(0, 0, 0, 1)


def drive(start: int, minutes: int, lng0: float = 36.8, every_s: int = 30, **extra):
    """Return positions of a drive east at 60 km/h, a fix every ``every_s``."""
    steps = minutes * 60 // every_s
    return [
        position(
            IMEI,
            start + i * every_s * 1000,
            0.0,
            lng0 + i * every_s / 60 * KM_LNG,
            speed=60.0,
            **extra,
        )
        for i in range(steps + 1)
    ]


def test_a_repeated_fix_time_keeps_the_first_fix_and_adds_no_teleport():
    t0 = utc("2026-03-02 06:00:00")
    fixes = drive(t0, 20, acc=True)
    clean_total = derive(settings_with(), IMEI, fixes)[0].track.distance_m(0, 2**62)
    teleport = {**fixes[10], "lat": 0.5, "lng": 37.5}

    for replay in (
        fixes[:11] + [teleport] + fixes[11:],
        # The repeat arrives late, after the fixes around it.
        fixes + [teleport],
    ):
        device, trips = derive(settings_with(), IMEI, replay)
        assert device.track.distance_m(0, 2**62) == pytest.approx(clean_total)
        assert len(device.track) == len(fixes)
        assert trips[0]["distance_m"] == pytest.approx(clean_total)

    # When the far one arrives first it is the fix, and its two segments are
    # implausible jumps: it costs the distance of two steps, nothing more.
    device, _ = derive(settings_with(), IMEI, fixes[:10] + [teleport] + fixes[11:])
    assert device.track.distance_m(0, 2**62) == pytest.approx(clean_total - 1_000)


def test_clock_reset_to_2000_is_rejected_upstream():
    ctx = CleanContext.from_settings(settings_with())
    received = utc("2026-03-02 06:00:00")
    for stamp in ("1980-01-06 00:00:00", "1999-12-31 23:59:59"):
        record = {"deviceImei": IMEI, "gpsTime": stamp, "lat": 0.1, "lng": 36.8}
        with pytest.raises(RejectedRecord, match="before 2000"):
            clean_position(Raw("push", "pushgps", received, IMEI, record), ctx)


@pytest.mark.parametrize("jump_first", [True, False])
# The first instant the clean stage lets through, and a clock some years behind.
@pytest.mark.parametrize("stamp", ["2000-01-01 00:00:00", "2024-01-01 00:00:00"])
def test_a_fix_years_off_makes_no_long_trip_and_no_distance(jump_first, stamp):
    t0 = utc("2026-03-02 06:00:00")
    real = drive(t0, 20, acc=True) + [
        position(IMEI, t0 + 21 * 60_000, 0.0, 36.8 + 20 * KM_LNG, speed=0.0, acc=False)
    ]
    stray = position(IMEI, utc(stamp), 0.0, 36.5, speed=40.0, acc=True)
    replay = [stray] + real if jump_first else real + [stray]

    device, trips = derive(settings_with(), IMEI, replay)

    assert [(t["start_time"], t["end_time"]) for t in trips] == [(t0, t0 + 21 * 60_000)]
    assert trips[0]["distance_m"] == pytest.approx(20_000, rel=0.001)
    days = {day: device.day_record(day, 0) for day in device.ledger.days}
    assert sum(d["gps_distance_m"] for d in days.values()) == pytest.approx(
        20_000, rel=0.001
    )
    # No day between the stray fix and the real ones was touched.
    assert set(days) <= {local_day(utc(stamp), device.config.zone), "2026-03-02"}


# Ignition reported, or motion alone.
@pytest.mark.parametrize(("acc", "acc_off"), [(True, False), (None, None)])
def test_a_device_off_for_three_days_closes_its_trip_at_the_last_fix(acc, acc_off):
    t0 = utc("2026-03-02 06:00:00")
    before = drive(t0, 20, acc=acc)
    # Switched off while driving (power cut); back three days later, 50 km
    # away, driving. No wall-clock silence: the fixes are processed back to back.
    t1 = t0 + 3 * 86_400_000
    after = drive(t1, 10, lng0=36.8 + 70 * KM_LNG, acc=acc) + [
        position(
            IMEI, t1 + 11 * 60_000, 0.0, 36.8 + 80 * KM_LNG, speed=0.0, acc=acc_off
        )
    ]

    device, trips = derive(settings_with(), IMEI, before + after)

    assert [(t["start_time"], t["end_time"]) for t in trips] == [
        (t0, before[-1]["gps_time"]),
        (t1, t1 + 11 * 60_000),
    ]
    assert trips[0]["distance_m"] == pytest.approx(20_000, rel=0.001)
    assert trips[1]["distance_m"] == pytest.approx(10_000, rel=0.001)
    # The 50 km between the two drives is not spread over the silent days.
    totals = {d: device.day_record(d, 0)["gps_distance_m"] for d in device.ledger.days}
    assert totals == {
        "2026-03-02": pytest.approx(20_000, rel=0.001),
        "2026-03-05": pytest.approx(10_000, rel=0.001),
    }


def test_gap_threshold_is_a_setting():
    t0 = utc("2026-03-02 06:00:00")
    before = drive(t0, 10, acc=True)
    t1 = before[-1]["gps_time"] + 2 * 3_600_000
    after = drive(t1, 10, lng0=before[-1]["lng"] + 5 * KM_LNG, acc=True)

    _, split = derive(settings_with(), IMEI, before + after)
    _, joined = derive(
        settings_with(max_fix_gap_seconds=3 * 3600), IMEI, before + after
    )

    assert len(split) == 2
    assert len(joined) == 1
    assert joined[0]["distance_m"] == pytest.approx(25_000, rel=0.001)


def test_trip_across_local_midnight_belongs_to_its_start_day_and_splits_mileage():
    # 23:50 to 00:20 in Nairobi (UTC+3): 10 minutes before midnight, 20 after.
    t0 = utc("2026-03-02 20:50:00")
    fixes = drive(t0, 30, every_s=45, acc=True) + [
        position(IMEI, t0 + 31 * 60_000, 0.0, 36.8 + 30 * KM_LNG, speed=0.0, acc=False)
    ]

    device, trips = derive(settings_with(), IMEI, fixes)

    assert len(trips) == 1
    trip = trips[0]
    assert local_day(trip["start_time"], device.config.zone) == "2026-03-02"
    first = device.day_record("2026-03-02", 0)
    second = device.day_record("2026-03-03", 0)
    # The segment over midnight is shared in proportion to time.
    assert first["gps_distance_m"] == pytest.approx(10_000, rel=0.001)
    assert second["gps_distance_m"] == pytest.approx(20_000, rel=0.001)
    assert first["gps_distance_m"] + second["gps_distance_m"] == pytest.approx(
        trip["distance_m"], rel=1e-9
    )


ODOMETER_FAULTS = {
    # Reset to zero (the counter reads again from a few metres) mid-drive.
    "reset": lambda i: 1_000_000.0 + i * 500 if i < 20 else 50.0 + (i - 20) * 500,
    # A 32-bit metre counter wrapping around.
    "rollover": lambda i: (4_294_960_000.0 + i * 500) % 4_294_967_296 or 1.0,
    # One misread of 1500 km, then correct readings again.
    "spike": lambda i: 80_000_000.0 + i * 500 + (1_500_000_000 if i == 25 else 0),
    # The counter set 3000 km ahead (a swapped device) and counting on.
    "jump": lambda i: 80_000_000.0 + i * 500 + (3_000_000_000 if i >= 30 else 0),
}


@pytest.mark.parametrize("fault", sorted(ODOMETER_FAULTS))
def test_odometer_that_resets_or_jumps_falls_back_to_gps(fault):
    t0 = utc("2026-03-02 06:00:00")
    reading = ODOMETER_FAULTS[fault]
    fixes = [
        {**fix, "odometer_m": reading(i)}
        for i, fix in enumerate(drive(t0, 30, acc=True))
    ]
    fixes.append({**fixes[-1], "gps_time": t0 + 31 * 60_000, "acc_on": False})

    device, trips = derive(settings_with(), IMEI, fixes)

    day = device.day_record("2026-03-02", 0)
    assert (day["distance_source"], day["odometer_distance_m"]) == ("gps", None)
    assert day["distance_m"] == pytest.approx(30_000, rel=0.001)
    assert trips[0]["distance_source"] == "gps"
    assert trips[0]["distance_m"] == pytest.approx(30_000, rel=0.001)


def test_odometer_counting_forward_is_still_preferred_in_any_arrival_order():
    t0 = utc("2026-03-02 06:00:00")
    fixes = [
        {**fix, "odometer_m": 80_000_000.0 + i * 520}
        for i, fix in enumerate(drive(t0, 30, acc=True))
    ]

    for replay in (fixes, fixes[::-1], fixes[1::2] + fixes[::2]):
        device, _ = derive(settings_with(), IMEI, replay)
        day = device.day_record("2026-03-02", 0)
        assert (day["distance_source"], day["distance_m"]) == ("odometer", 31_200.0)


# The stream against the database ---------------------------------------------------

INSERT_FIX = """
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    acc_on, pos_type, odometer_m, source, origin, received_at)
VALUES ($1, to_timestamp($2 / 1000.0), $3, $4, $5, $6, $7, $8, $9, $10,
        to_timestamp($11 / 1000.0))
ON CONFLICT DO NOTHING
"""

DAYS_QUERY = """
SELECT to_char(day_start AT TIME ZONE 'Africa/Nairobi', 'YYYY-MM-DD') AS day,
       fixes, gps_km, odometer_readings, odometer_delta_m
FROM tracksolid.v_mileage_daily_cagg WHERE imei = $1 ORDER BY day_start
"""


async def database_days(url: str, positions: list[dict]) -> dict[str, asyncpg.Record]:
    """Write positions in arrival order to the database; return its refreshed days."""
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            INSERT_FIX,
            [
                (
                    p["imei"],
                    p["gps_time"],
                    p["lat"],
                    p["lng"],
                    p["speed_kmh"],
                    p["acc_on"],
                    p["pos_type"],
                    p["odometer_m"],
                    "push",
                    "pushgps",
                    p["received_at"],
                )
                for p in positions
            ],
        )
        await conn.execute("SELECT tracksolid.refresh_mileage_daily(NULL, NULL)")
        rows = await conn.fetch(DAYS_QUERY, positions[0]["imei"])
    finally:
        await conn.close()
    return {row["day"]: row for row in rows}


@pytest.mark.parametrize("name", ["truck-A", "truck-B"])
async def test_stream_day_matches_the_database_day(database_url, name):
    imei, positions, _ = truck_pushes(name)

    rows = await database_days(database_url, positions)
    device, _ = derive(settings_with(), imei, positions)

    assert set(rows) == set(device.ledger.days)
    for day, row in rows.items():
        stream = device.day_record(day, 0)
        assert stream["fixes"] == row["fixes"]
        # Same rules on the same fixes: they agree to rounding, far inside 1 %.
        assert stream["gps_distance_m"] == pytest.approx(row["gps_km"] * 1000, rel=1e-6)
        if stream["distance_source"] == "odometer":
            assert stream["odometer_distance_m"] == row["odometer_delta_m"]


async def test_stream_and_database_differ_by_the_step_over_midnight(database_url):
    # truck-A's drive moved so that Nairobi midnight (21:00 UTC) falls in the
    # middle of a step it drives at speed.
    imei, positions, _ = truck_pushes("truck-A")
    ordered = sorted(
        {p["gps_time"]: p for p in positions}.values(), key=lambda p: p["gps_time"]
    )
    a, b = next(
        (a, b)
        for a, b in zip(ordered, ordered[1:], strict=False)
        if a["gps_time"] >= utc("2018-05-03 16:00:00")
        and min(a["speed_kmh"], b["speed_kmh"]) >= 20
    )
    shift = utc("2018-05-03 21:00:00") - (a["gps_time"] + b["gps_time"]) // 2
    moved = [
        {
            **p,
            "gps_time": p["gps_time"] + shift,
            "received_at": p["received_at"] + shift,
        }
        for p in positions
    ]

    rows = await database_days(database_url, moved)
    device, _ = derive(settings_with(), imei, moved)

    assert sorted(rows) == ["2018-05-03", "2018-05-04"]
    stream_m = sum(device.day_record(d, 0)["gps_distance_m"] for d in rows)
    database_m = sum(row["gps_km"] * 1000 for row in rows.values())
    # The database sums the steps within each local day; the stream also counts
    # the one step that crosses midnight, shared between the two days.
    midnight = utc("2018-05-03 21:00:00")
    before = device.track.last_before(midnight)
    after = device.track.path_between(midnight, midnight + 3_600_000)[0]
    crossing = haversine_m(before.lat, before.lng, after.lat, after.lng)
    assert crossing > 0
    assert stream_m - database_m == pytest.approx(crossing, rel=1e-6)


def test_days_saved_before_first_and_last_readings_were_kept_still_load():
    zone = settings_with().fleet_timezone
    saved = {"horizon": None, "days": {"2026-03-02": [900.0, 3, 1, 2, 5e6, 5.1e6, 3]}}

    day = DayLedger.from_state(ZoneInfo(zone), saved).days["2026-03-02"]

    assert day.odometer_first is None
    assert day.figure(250.0) == (100_000.0, "odometer")
    assert (
        DayLedger.from_state(
            ZoneInfo(zone), DayLedger(ZoneInfo(zone), {"d": day}).to_state()
        ).days["d"]
        == day
    )


def test_odometer_that_ticks_by_the_kilometre_or_disagrees_by_metres_is_used():
    t0 = utc("2026-03-02 06:00:00")
    # Fixes a second apart at 60 km/h; a counter of whole kilometres ticks on
    # one of them, and every other reading comes from a poll rounded to 100 m.
    fixes = drive(t0, 30, every_s=1, acc=True)
    for i, fix in enumerate(fixes):
        metres = 80_000_000.0 + i * 1000 / 60
        fix["odometer_m"] = float(int(metres // 1000) * 1000)
        if i % 2:
            fix["odometer_m"] = round(metres, -2) - 40.0
    fixes.append({**fixes[-1], "gps_time": t0 + 31 * 60_000, "acc_on": False})

    device, trips = derive(settings_with(), IMEI, fixes)

    day = device.day_record("2026-03-02", 0)
    assert day["distance_source"] == "odometer"
    assert day["distance_m"] == pytest.approx(30_000, abs=1_100)
    assert trips[0]["distance_source"] == "odometer"
    assert trips[0]["distance_m"] == pytest.approx(30_000, abs=1_100)

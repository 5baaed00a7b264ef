"""Trips and daily distance of the two real trucks, against the platform's truth.

The fixes come from ``fakeplatform.traces``; the ignition events, which that
loader folds into each fix's ``acc_on``, are added as fixes of their own at
their event time, because Tracksolid devices report an ACC change with a fix.
Everything is replayed in the order the platform received it, so the recorded
inversions, repeats and late deliveries are part of every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from fakeplatform.traces import TRACES_DIR, load_traces
from fleetstream.settings import Settings
from processors.derived import DerivedConfig, DeviceDerivation

TRUCK_FILES = {
    "truck-A": ("truck-A_2018-05-03_part1.json", "truck-A_2018-05-03_part2.json"),
    "truck-B": ("truck-B_2018-05-04.json",),
}


def ms(text: str) -> int:
    """Return epoch ms of an ISO time like 2018-05-03T15:09:57.000+0000."""
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)


def utc(text: str) -> int:
    """Return epoch ms of a UTC time like 2018-05-03 15:09:57."""
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Arrival:
    """One Position record and when the platform received it."""

    received_ms: int
    position: dict


def truck_positions(name: str) -> tuple[str, list[dict]]:
    """Return the IMEI and Position records of a truck in arrival order."""
    trace = load_traces([name])[0]
    events = []
    for file in TRUCK_FILES[name]:
        path = TRACES_DIR / "drvr-trucks-myanmar" / file
        events.extend(json.loads(path.read_text(encoding="utf-8")))
    start = min(
        ms(e["ev"]["pos"]["posTime"]) for e in events if e["type"] == "vehicle-position"
    )
    arrivals = [
        Arrival(
            start + int(p.delivery_offset_s * 1000),
            position(
                trace.imei,
                start + int(p.offset_s * 1000),
                p.lat,
                p.lng,
                p.speed_kmh,
                p.acc_on,
                p.odometer_m,
            ),
        )
        for p in trace.points
    ]
    for event in events:
        if event["type"] in ("vehicle-ign-on", "vehicle-ign-off"):
            ev = event["ev"]
            coords = ev["pos"]["latlon"]
            arrivals.append(
                Arrival(
                    ms(ev["receivedTs"]),
                    position(
                        trace.imei,
                        ms(ev["ts"]),
                        coords["lat"],
                        coords["lng"],
                        ev["pos"]["speed"],
                        event["type"] == "vehicle-ign-on",
                        None,
                    ),
                )
            )
    arrivals.sort(key=lambda a: a.received_ms)
    return trace.imei, [a.position for a in arrivals]


def position(imei, t, lat, lng, speed, acc_on, odometer_m) -> dict:
    return {
        "imei": imei,
        "gps_time": t,
        "lat": lat,
        "lng": lng,
        "speed_kmh": None if speed is None else float(speed),
        "direction_deg": None,
        "acc_on": acc_on,
        "pos_type": "GPS",
        "satellites": None,
        "altitude_m": None,
        "reupload": None,
        "odometer_m": odometer_m,
        "source": "push",
        "origin": "pushgps",
        "received_at": t,
    }


def derive(settings: Settings, imei: str, positions: list[dict]):
    """Run positions through one device derivation; return it and its trips."""
    config = DerivedConfig.from_settings(settings)
    device = DeviceDerivation(imei, config)
    trips = {}
    wall = 1_000
    for record in positions:
        changes = device.apply(config.fix(record), wall)
        if changes:
            trips.update({t["trip_id"]: t for t in changes.trips})
    late = device.expire(wall + 10_000_000)
    if late:
        trips.update({t["trip_id"]: t for t in late.trips})
    return device, sorted(trips.values(), key=lambda t: t["start_time"])


def day_totals(device: DeviceDerivation) -> dict[str, dict]:
    return {day: device.day_record(day, 0) for day in sorted(device.ledger.days)}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(environment="test", fleet_timezone="Africa/Nairobi")


def test_truck_a_is_one_trip_from_ignition_on_to_off_despite_the_glitch(settings):
    imei, positions = truck_positions("truck-A")
    glitch = [
        p["acc_on"] for p in positions if p["gps_time"] == utc("2018-05-03 15:38:20")
    ]
    assert glitch == [False], "the recorded 1 s ignition-off must be in the input"

    device, trips = derive(settings, imei, positions)

    assert [(t["start_time"], t["end_time"]) for t in trips] == [
        (utc("2018-05-03 15:09:57"), utc("2018-05-03 16:53:49"))
    ]
    # No CAN odometer on truck-A: the GPS path, 18.3 + 31.1 km by the platform.
    assert trips[0]["distance_source"] == "gps"
    assert trips[0]["distance_m"] == pytest.approx(49_400, rel=0.01)
    day = day_totals(device)["2018-05-03"]
    assert day["distance_source"] == "gps"
    assert day["distance_m"] == pytest.approx(trips[0]["gps_distance_m"], rel=1e-9)


def test_truck_b_trip_and_day_match_the_can_odometer(settings):
    imei, positions = truck_positions("truck-B")

    device, trips = derive(settings, imei, positions)

    assert [(t["start_time"], t["end_time"]) for t in trips] == [
        (utc("2018-05-04 03:55:35"), utc("2018-05-04 05:02:22"))
    ]
    trip = trips[0]
    assert (trip["distance_source"], trip["distance_m"]) == ("odometer", 25_100.0)
    assert trip["gps_distance_m"] == pytest.approx(25_100, rel=0.05)
    day = day_totals(device)["2018-05-04"]
    assert (day["distance_source"], day["distance_m"]) == ("odometer", 25_100.0)
    assert day["odometer_distance_m"] == 25_100.0
    assert day["gps_distance_m"] == pytest.approx(25_100, rel=0.05)
    # The platform's own GPS path length is 24.2 km.
    assert day["gps_distance_m"] == pytest.approx(24_200, rel=0.01)


@pytest.mark.parametrize("name", ["truck-A", "truck-B"])
def test_day_distance_does_not_depend_on_arrival_order_or_repeats(settings, name):
    imei, positions = truck_positions(name)
    in_time_order = sorted(positions, key=lambda p: p["gps_time"])
    backwards = list(reversed(in_time_order))
    twice = positions + positions[::2]

    expected = day_totals(derive(settings, imei, in_time_order)[0])

    for replay in (positions, backwards, twice):
        got = day_totals(derive(settings, imei, replay)[0])
        assert got.keys() == expected.keys()
        for day, record in got.items():
            assert record["gps_distance_m"] == pytest.approx(
                expected[day]["gps_distance_m"], rel=1e-9
            )
            assert record["fixes"] == expected[day]["fixes"]

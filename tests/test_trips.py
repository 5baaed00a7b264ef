"""The trip state machine on ignition and motion, and trip summaries."""

from __future__ import annotations

import math

import pytest

from processors.distance import Fix, JitterRules, Track
from processors.trips import (
    DERIVED,
    PLATFORM,
    Span,
    TripMachine,
    TripRules,
    summarise,
    trip_id,
)

RULES = TripRules(
    motion_min_speed_kmh=5.0,
    min_distance_m=500.0,
    min_duration_s=300.0,
    min_stop_s=300.0,
    acc_flap_s=60.0,
    idle_close_s=300.0,
)
JITTER = JitterRules()
DEGREE_M = math.pi / 180 * 6_371_008.8
T0 = 1_700_000_000_000


def at(t_s: float, metres: float, speed: float | None, acc: bool | None, **kw) -> Fix:
    """Return a fix ``metres`` north of (-1.3, 36.8), ``t_s`` seconds after T0."""
    return Fix(int(T0 + t_s * 1000), -1.3 + metres / DEGREE_M, 36.8, speed, acc, **kw)


def drive(t_s: float, seconds: float, from_m: float, acc: bool | None, step_s=10):
    """Return fixes of a drive at 36 km/h (10 m/s) lasting ``seconds``."""
    return [
        at(t_s + i, from_m + i * 10.0, 36.0, acc)
        for i in range(0, int(seconds) + 1, step_s)
    ]


def park(t_s: float, seconds: float, where_m: float, acc: bool | None, step_s=30):
    return [at(t_s + i, where_m, 0.0, acc) for i in range(0, int(seconds) + 1, step_s)]


def run(fixes: list[Fix], silence_s: float = 0.0) -> tuple[list[Span], Track]:
    machine, track, spans = TripMachine(RULES), Track(JITTER), []
    for fix in fixes:
        track.add(fix)
        spans += machine.step(fix)
    spans += machine.expire(silence_s)
    return spans, track


def times(spans: list[Span]) -> list[tuple[float, float]]:
    return [((s.start.t - T0) / 1000, (s.end.t - T0) / 1000) for s in spans]


def test_ignition_on_to_off_is_one_trip():
    fixes = [
        *park(0, 60, 0, False),
        at(100, 0, 0.0, True),
        *drive(130, 600, 0, True),
        at(760, 6_000, 0.0, False),
        *park(800, 300, 6_000, False),
    ]

    spans, track = run(fixes)

    assert times(spans) == [(100, 760)]
    trip = summarise("860000000000001", spans[0], track, RULES, 0)
    assert trip["distance_m"] == pytest.approx(6_000, rel=0.01)
    assert trip["distance_source"] == "gps"
    assert trip["duration_s"] == 660
    assert trip["max_speed_kmh"] == 36.0
    assert trip["avg_speed_kmh"] == pytest.approx(6_000 / 660 * 3.6, rel=0.01)


def test_short_ignition_flap_does_not_split_a_trip():
    fixes = [
        at(0, 0, 0.0, True),
        *drive(10, 600, 0, True),
        at(611, 6_010, 0.0, False),
        at(612, 6_010, 0.0, True),
        *drive(620, 600, 6_010, True),
        at(1_230, 12_020, 0.0, False),
        at(1_300, 12_020, 0.0, False),
    ]

    spans, _ = run(fixes)

    assert times(spans) == [(0, 1_230)]


def test_ignition_off_longer_than_the_flap_window_splits():
    fixes = [
        at(0, 0, 0.0, True),
        *drive(10, 600, 0, True),
        at(611, 6_010, 0.0, False),
        at(700, 6_010, 0.0, True),
        *drive(710, 600, 6_010, True),
        at(1_320, 12_020, 0.0, False),
        at(1_400, 12_020, 0.0, False),
    ]

    spans, _ = run(fixes)

    assert times(spans) == [(0, 611), (700, 1_320)]


def test_long_stop_with_engine_running_does_not_split():
    fixes = [
        at(0, 0, 0.0, True),
        *drive(10, 600, 0, True),
        *park(640, 900, 6_000, True),
        *drive(1_560, 600, 6_000, True),
        at(2_200, 12_000, 0.0, False),
        at(2_300, 12_000, 0.0, False),
    ]

    spans, _ = run(fixes)

    assert times(spans) == [(0, 2_200)]


def test_without_ignition_a_five_minute_stop_ends_the_trip():
    fixes = [
        *park(0, 60, 0, None),
        *drive(70, 600, 0, None),
        *park(700, 400, 6_000, None, step_s=20),
        *drive(1_110, 600, 6_000, None),
        *park(1_720, 400, 12_000, None, step_s=20),
    ]

    spans, _ = run(fixes)

    assert times(spans) == [(70, 700), (1_110, 1_720)]


def test_without_ignition_a_short_stop_does_not_split():
    fixes = [
        *drive(0, 600, 0, None),
        *park(610, 120, 6_000, None),
        *drive(740, 600, 6_000, None),
        *park(1_350, 400, 12_000, None, step_s=20),
    ]

    spans, _ = run(fixes)

    assert times(spans) == [(0, 1_350)]


def test_motion_without_reported_speed_uses_the_implied_speed():
    fixes = [at(i * 10, i * 100.0, None, None) for i in range(40)]
    fixes += [at(400 + i * 20, 3_900, None, None) for i in range(1, 20)]

    spans, _ = run(fixes)

    assert times(spans) == [(10, 420)]


def test_silence_closes_the_trip_at_its_candidate_end_or_last_fix():
    waiting = [at(0, 0, 0.0, True), *drive(10, 600, 0, True), at(620, 6_000, 0, False)]
    still_on = [at(0, 0, 0.0, True), *drive(10, 600, 0, True)]

    assert run(waiting, silence_s=100)[0] == []
    assert times(run(waiting, silence_s=300)[0]) == [(0, 620)]
    assert times(run(still_on, silence_s=300)[0]) == [(0, 610)]


def test_idling_without_moving_is_not_a_trip():
    fixes = [*park(0, 900, 0, True), at(910, 0, 0.0, False), at(1_000, 0, 0.0, False)]

    spans, track = run(fixes)

    assert times(spans) == [(0, 910)]
    assert summarise("860000000000001", spans[0], track, RULES, 0) is None


def test_short_hop_is_not_a_trip():
    fixes = [at(0, 0, 0.0, True), *drive(10, 30, 0, True), at(60, 300, 0, False)]
    fixes.append(at(200, 300, 0, False))

    spans, track = run(fixes)

    assert summarise("860000000000001", spans[0], track, RULES, 0) is None


def test_device_odometer_is_preferred_to_the_gps_path():
    fixes = [
        at(0, 0, 0.0, True, odometer_m=100_000.0),
        *drive(10, 600, 0, True),
        at(620, 6_000, 0.0, False, odometer_m=106_400.0),
        at(700, 6_000, 0.0, False),
    ]
    spans, track = run(fixes)

    trip = summarise("860000000000001", spans[0], track, RULES, 0)

    assert trip["distance_source"] == "odometer"
    assert trip["distance_m"] == 6_400.0
    assert trip["gps_distance_m"] == pytest.approx(6_000, rel=0.01)
    assert (trip["start_odometer_m"], trip["end_odometer_m"]) == (100_000, 106_400)


def test_trip_id_is_stable_and_depends_on_device_start_and_source():
    first = trip_id("860000000000001", T0, DERIVED)

    assert first == trip_id("860000000000001", T0, DERIVED)
    assert first != trip_id("860000000000001", T0, PLATFORM)
    assert first != trip_id("860000000000001", T0 + 1, DERIVED)
    assert first != trip_id("860000000000002", T0, DERIVED)


def test_machine_state_survives_a_round_trip():
    fixes = [at(0, 0, 0.0, True), *drive(10, 300, 0, True), at(320, 3_000, 0, False)]
    machine = TripMachine(RULES)
    for fix in fixes:
        machine.step(fix)

    restored = TripMachine.from_state(RULES, machine.to_state())
    later = at(400, 3_000, 0.0, False)

    assert restored.to_state() == machine.to_state()
    assert times(restored.step(later)) == times(machine.step(later)) == [(0, 320)]


def test_odometer_running_backwards_falls_back_to_the_gps_path():
    fixes = [
        at(0, 0, 0.0, True, odometer_m=100_000.0),
        *drive(10, 600, 0, True),
        at(620, 6_000, 0.0, False, odometer_m=90_000.0),
        at(700, 6_000, 0.0, False),
    ]
    spans, track = run(fixes)

    trip = summarise("860000000000001", spans[0], track, RULES, 0)

    assert trip["distance_source"] == "gps"
    assert trip["distance_m"] == pytest.approx(6_000, rel=0.01)

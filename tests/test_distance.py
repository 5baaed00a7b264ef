"""Distance per fix: haversine, jitter rules, placed fixes and day buckets."""

from __future__ import annotations

import itertools
import math
import random
from zoneinfo import ZoneInfo

import pytest

from processors.distance import Fix, JitterRules, Track, haversine_m, segment_m
from processors.mileage import DayLedger, local_day, split_by_day

RULES = JitterRules(max_speed_kmh=3.0, max_step_m=30.0, max_plausible_kmh=250.0)
NAIROBI = ZoneInfo("Africa/Nairobi")
# One degree of latitude on the mean-radius sphere, in metres.
DEGREE_M = math.pi / 180 * 6_371_008.8


def east(t_s: int, metres: float, speed: float | None = 36.0, **kw) -> Fix:
    """Return a fix ``metres`` east of (-1.3, 36.8) at ``t_s`` seconds."""
    lng = 36.8 + metres / (DEGREE_M * math.cos(math.radians(-1.3)))
    return Fix(t_s * 1000, -1.3, lng, speed, **kw)


def total(track: Track) -> float:
    return track.distance_m(track.path_times[0], track.path_times[-1])


def test_haversine_matches_known_distances():
    assert haversine_m(0, 0, 1, 0) == pytest.approx(DEGREE_M, rel=1e-9)
    # London to Paris, the textbook haversine example: 343.5 km.
    assert haversine_m(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(
        343_500, rel=0.002
    )
    assert haversine_m(10, 20, 10, 20) == 0.0


def test_moving_segments_count_their_length():
    a, b = east(0, 0), east(10, 100)

    assert segment_m(a, b, RULES) == pytest.approx(100, rel=0.001)


def test_stationary_jitter_adds_nothing():
    still = [east(i * 10, (i % 3) * 8, speed=0.0) for i in range(10)]
    track = Track(RULES)
    for fix in still:
        track.add(fix)

    assert total(track) == 0.0
    # The same steps count when the device says it is moving (slow traffic).
    assert segment_m(east(0, 0, speed=5.0), east(10, 8, speed=5.0), RULES) > 7.9


def test_without_reported_speed_a_small_step_is_judged_by_its_own_speed():
    # 20 m in a minute is 1.2 km/h: a parked device wandering.
    assert segment_m(east(0, 0, None), east(60, 20, None), RULES) == 0.0
    # 5 m in a second is 18 km/h: a device logging every second while driving.
    assert segment_m(east(0, 0, None), east(1, 5, None), RULES) == pytest.approx(5)
    assert segment_m(east(0, 0, None), east(60, 50, None), RULES) > 49
    # A reported speed, when there is one, still decides.
    assert segment_m(east(0, 0, 0.0), east(1, 5, None), RULES) == 0.0


def test_implausible_jump_adds_nothing_and_does_not_poison_the_path():
    good = [east(i * 10, i * 100.0) for i in range(5)]
    outlier = Fix(25_000, -1.0, 37.5, 40.0)
    track = Track(RULES)
    for fix in [*good[:3], outlier, *good[3:]]:
        track.add(fix)

    # 0-100-200, then 200->outlier and outlier->300 are both impossible, then 300-400.
    assert total(track) == pytest.approx(300.0, rel=0.001)


def test_coarse_fixes_are_not_on_the_path_but_are_remembered():
    track = Track(RULES)
    track.add(east(0, 0))
    lbs = track.add(Fix(5_000, -1.31, 36.81, 30.0, counted=False))
    track.add(east(10, 100))

    assert lbs is not None and lbs.delta_m == 0.0
    assert total(track) == pytest.approx(100, rel=0.001)
    assert 5_000 in track
    assert track.add(Fix(5_000, -1.31, 36.81, 30.0, counted=False)) is None


def test_repeated_fix_adds_nothing():
    track = Track(RULES)
    track.add(east(0, 0))
    track.add(east(10, 100))

    assert track.add(east(10, 100)) is None
    assert track.add(east(10, 500)) is None
    assert total(track) == pytest.approx(100, rel=0.001)


def test_late_fix_is_placed_between_its_neighbours():
    track = Track(RULES)
    track.add(east(0, 0))
    track.add(east(20, 0.0 + 200))
    detour = Fix(10_000, -1.3 + 100 / DEGREE_M, east(10, 100).lng, 36.0)

    placement = track.add(detour)

    leg = math.hypot(100, 100)
    assert placement.removed[2] == pytest.approx(200, rel=0.001)
    assert placement.delta_m == pytest.approx(2 * leg - 200, rel=0.001)
    assert total(track) == pytest.approx(2 * leg, rel=0.001)


def test_total_is_the_same_in_every_arrival_order():
    rng = random.Random(7)
    fixes = [
        Fix(i * 5_000, -1.3 + rng.uniform(-0.001, 0.001), 36.8 + i * 0.0004, 30.0)
        for i in range(6)
    ]
    expected = Track(RULES)
    for fix in fixes:
        expected.add(fix)
    reference = total(expected)

    for order in itertools.permutations(fixes):
        track = Track(RULES)
        running = sum(track.add(fix).delta_m for fix in order)
        assert running == pytest.approx(reference, rel=1e-9)
        assert total(track) == pytest.approx(reference, rel=1e-9)


def test_odometer_readings_come_from_every_fix():
    track = Track(RULES)
    track.add(east(0, 0, odometer_m=1_000.0))
    track.add(Fix(5_000, -1.3, 36.8, None, odometer_m=1_050.0, counted=False))
    track.add(east(10, 100, odometer_m=0.0))
    track.add(east(20, 200, odometer_m=1_200.0))

    assert track.odometer_between(0, 20_000) == (1_000.0, 1_200.0)
    assert track.odometer_between(0, 5_000) == (1_000.0, 1_050.0)
    assert track.odometer_between(10_000, 20_000) is None


def test_prune_keeps_the_predecessor_of_the_window():
    track = Track(RULES)
    for i in range(10):
        track.add(east(i * 10, i * 100.0))

    pruned = track.prune(cutoff=45_000)

    assert pruned == [0, 10_000, 20_000, 30_000]
    assert track.path_times[0] == 40_000
    placement = track.add(east(45, 450))
    assert placement.removed[0].t == 40_000


def test_segment_across_midnight_is_split_by_time():
    # 20:50 UTC is 23:50 in Nairobi; 21:10 UTC is 00:10 the next day.
    a_ms = 1_700_000_000_000 - (1_700_000_000_000 % 86_400_000) + 20 * 3_600_000
    a_ms += 50 * 60_000
    b_ms = a_ms + 20 * 60_000

    shares = dict(split_by_day(a_ms, b_ms, 1_000.0, NAIROBI))

    assert shares == pytest.approx(
        {local_day(a_ms, NAIROBI): 500.0, local_day(b_ms, NAIROBI): 500.0}
    )


def test_late_fix_updates_the_day_it_belongs_to():
    ledger = DayLedger(NAIROBI)
    track = Track(RULES)
    two_days = 2 * 86_400
    day1 = [east(i * 60, i * 1_000.0) for i in range(5)]
    day3 = [east(two_days + i * 60, 4_000 + i * 1_000.0) for i in range(5)]
    for fix in day1[:2] + day1[3:] + day3:
        ledger.record(fix, track.add(fix))
    first, third = local_day(day1[0].t, NAIROBI), local_day(day3[0].t, NAIROBI)
    assert ledger.days[first].gps_m == pytest.approx(4_000, rel=0.001)
    detour = Fix(day1[2].t, -1.3 + 1_000 / DEGREE_M, day1[2].lng, 36.0)

    touched = ledger.record(detour, track.add(detour))

    assert touched == {first}
    expected = 2_000 + 2 * math.hypot(1_000, 1_000)
    assert ledger.days[first].gps_m == pytest.approx(expected, rel=0.001)
    assert ledger.days[first].fixes == 5
    assert ledger.days[third].gps_m == pytest.approx(4_000, rel=0.001)


def test_day_prefers_the_odometer_unless_it_jumped():
    ledger = DayLedger(NAIROBI)
    track = Track(RULES)
    for fix in (east(0, 0, odometer_m=5_000.0), east(60, 1_000, odometer_m=6_100.0)):
        ledger.record(fix, track.add(fix))
    day = ledger.days[local_day(0, NAIROBI)]
    assert day.figure(250.0) == (1_100.0, "odometer")

    reset = east(120, 2_000, odometer_m=4_000_000.0)
    ledger.record(reset, track.add(reset))

    assert day.odometer_figure(250.0) is None
    assert day.figure(250.0) == (pytest.approx(2_000, rel=0.001), "gps")

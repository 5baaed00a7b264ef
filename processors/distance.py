"""Distance along a device's path: haversine, jitter rules and placed fixes.

The distance of a path is the sum of its segments, a segment joining two
consecutive counted fixes in ``gps_time`` order. A fix is counted when its
``pos_type`` is one of ``Settings.distance_pos_types`` (GPS by default): cell
and Wi-Fi positions are hundreds of metres off and would add phantom distance.

A segment's length is a pure function of its two ends (``segment_m``):

* stationary jitter counts nothing: the step is under ``jitter_max_step_m``
  and neither end reports a speed of ``jitter_max_speed_kmh`` or more. When
  neither end reports a speed at all, the step's own speed decides instead: a
  device logging every second moves a few metres a step, and calling all of
  those jitter would lose most of the drive. The database's step rule treats
  such steps as jitter; it differs from the stream for fixes without speed;
* an implausible jump counts nothing: the implied speed exceeds
  ``max_plausible_speed_kmh``. The fix stays on the path, so one bad fix costs
  only its two segments and cannot poison the fixes after it;
* a gap counts nothing: the ends are more than ``max_fix_gap_seconds`` apart.
  Where the vehicle went while its device was off (or while its clock jumped
  years) was not observed, and a straight line spread over the days in between
  would credit them with driving nobody saw. The odometer, when the device has
  one, still measures such a day.

Because a segment depends on its ends only, a fix that arrives out of order is
placed between its neighbours: the segment it splits is replaced by the two new
ones. The total is then the same whatever order the fixes arrived in, and a
repeated ``gps_time`` adds nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from fleetstream.geo import haversine_m
from fleetstream.settings import Settings


@dataclass(frozen=True, slots=True)
class Fix:
    """One fix as the derived facts need it; ``t`` is gps_time in epoch ms."""

    t: int
    lat: float
    lng: float
    speed_kmh: float | None = None
    acc_on: bool | None = None
    odometer_m: float | None = None
    counted: bool = True

    def as_list(self) -> list:
        return [
            self.t,
            self.lat,
            self.lng,
            self.speed_kmh,
            self.acc_on,
            self.odometer_m,
            self.counted,
        ]

    @classmethod
    def from_list(cls, values: list) -> Fix:
        return cls(*values)


@dataclass(frozen=True, slots=True)
class JitterRules:
    """Thresholds that decide whether a segment counts."""

    max_speed_kmh: float = 3.0
    max_step_m: float = 30.0
    max_plausible_kmh: float = 250.0
    max_gap_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> JitterRules:
        return cls(
            settings.jitter_max_speed_kmh,
            settings.jitter_max_step_m,
            settings.max_plausible_speed_kmh,
            settings.max_fix_gap_seconds,
        )


def segment_m(a: Fix, b: Fix, rules: JitterRules) -> float:
    """Return the distance the segment from ``a`` to ``b`` adds to the path."""
    step = haversine_m(a.lat, a.lng, b.lat, b.lng)
    seconds = abs(b.t - a.t) / 1000
    if seconds == 0 or seconds > rules.max_gap_s:
        return 0.0
    if step < rules.max_step_m:
        speeds = [s for s in (a.speed_kmh, b.speed_kmh) if s is not None]
        if not speeds:
            speeds = [step / seconds * 3.6]
        if max(speeds) < rules.max_speed_kmh:
            return 0.0
    if step / seconds * 3.6 > rules.max_plausible_kmh:
        return 0.0
    return step


@dataclass(frozen=True, slots=True)
class Placement:
    """How one new counted fix changed the path.

    ``removed`` is the segment it split (or None), ``added`` the one or two
    segments that now exist in its place. Each segment is ``(a, b, metres)``.
    """

    removed: tuple[Fix, Fix, float] | None
    added: tuple[tuple[Fix, Fix, float], ...]

    @property
    def delta_m(self) -> float:
        gained = sum(metres for _, _, metres in self.added)
        return gained - (self.removed[2] if self.removed else 0.0)


class Track:
    """The fixes of one device within the state window, in gps_time order.

    Every accepted fix is remembered so that a repeat is recognised; counted
    fixes form the path. Readings of the device odometer are kept from every
    fix, counted or not.
    """

    def __init__(self, rules: JitterRules) -> None:
        self.rules = rules
        self.times: list[int] = []
        self.path_times: list[int] = []
        self.path: list[Fix] = []
        self.odometer_times: list[int] = []
        self.odometer: list[float] = []

    def __len__(self) -> int:
        return len(self.times)

    def __contains__(self, t: int) -> bool:
        i = bisect_left(self.times, t)
        return i < len(self.times) and self.times[i] == t

    def load(self, fixes: list[Fix]) -> None:
        """Fill an empty track with fixes already in gps_time order (recovery)."""
        for fix in fixes:
            self.times.append(fix.t)
            if fix.odometer_m is not None and fix.odometer_m > 0:
                self.odometer_times.append(fix.t)
                self.odometer.append(fix.odometer_m)
            if fix.counted:
                self.path_times.append(fix.t)
                self.path.append(fix)

    def add(self, fix: Fix) -> Placement | None:
        """Place a new fix; return how the path changed, None for a repeat.

        Fixes that are not counted change no segment and return an empty
        placement.
        """
        i = bisect_left(self.times, fix.t)
        if i < len(self.times) and self.times[i] == fix.t:
            return None
        self.times.insert(i, fix.t)
        if fix.odometer_m is not None and fix.odometer_m > 0:
            j = bisect_left(self.odometer_times, fix.t)
            self.odometer_times.insert(j, fix.t)
            self.odometer.insert(j, fix.odometer_m)
        if not fix.counted:
            return Placement(None, ())
        return self._place(fix)

    def _place(self, fix: Fix) -> Placement:
        i = bisect_left(self.path_times, fix.t)
        before = self.path[i - 1] if i > 0 else None
        after = self.path[i] if i < len(self.path) else None
        self.path_times.insert(i, fix.t)
        self.path.insert(i, fix)
        removed = None
        if before is not None and after is not None:
            removed = (before, after, segment_m(before, after, self.rules))
        added = []
        if before is not None:
            added.append((before, fix, segment_m(before, fix, self.rules)))
        if after is not None:
            added.append((fix, after, segment_m(fix, after, self.rules)))
        return Placement(removed, tuple(added))

    def distance_m(self, start: int, end: int) -> float:
        """Return the path length between two times, both ends included."""
        lo = bisect_left(self.path_times, start)
        hi = bisect_left(self.path_times, end + 1)
        fixes = self.path[lo:hi]
        pairs = zip(fixes, fixes[1:], strict=False)
        return sum(segment_m(a, b, self.rules) for a, b in pairs)

    def path_between(self, start: int, end: int) -> list[Fix]:
        lo = bisect_left(self.path_times, start)
        return self.path[lo : bisect_left(self.path_times, end + 1)]

    def odometer_between(self, start: int, end: int) -> tuple[float, float] | None:
        """Return the first and last odometer reading between two times."""
        lo = bisect_left(self.odometer_times, start)
        hi = bisect_left(self.odometer_times, end + 1)
        if hi - lo < 2:
            return None
        return self.odometer[lo], self.odometer[hi - 1]

    def odometer_readings(self, start: int, end: int) -> list[tuple[int, float]]:
        """Return the (time, reading) pairs between two times, in time order."""
        lo = bisect_left(self.odometer_times, start)
        hi = bisect_left(self.odometer_times, end + 1)
        return list(zip(self.odometer_times[lo:hi], self.odometer[lo:hi], strict=True))

    def last_before(self, t: int) -> Fix | None:
        i = bisect_left(self.path_times, t)
        return self.path[i - 1] if i > 0 else None

    def prune(self, cutoff: int) -> list[int]:
        """Forget fixes older than ``cutoff``; return their times.

        The last path fix before the cutoff is kept: a fix placed later at or
        after the cutoff still finds its true predecessor.
        """
        keep_from = bisect_left(self.path_times, cutoff)
        path_cut = max(0, keep_from - 1)
        oldest_kept = self.path_times[path_cut] if self.path else cutoff
        limit = min(cutoff, oldest_kept)
        n = bisect_left(self.times, limit)
        pruned = self.times[:n]
        del self.times[:n]
        del self.path_times[:path_cut]
        del self.path[:path_cut]
        m = bisect_left(self.odometer_times, limit)
        del self.odometer_times[:m]
        del self.odometer[:m]
        return pruned

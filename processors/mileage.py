"""Daily mileage per device per local day, kept current when fixes arrive late.

Each day (in ``Settings.fleet_timezone``) holds the GPS path length of the day,
the lowest and highest device odometer reading, the number of path fixes and
the first and last fix time. A placed fix (``processors.distance.Placement``)
updates the days of the segments it removed and added; a segment that crosses
midnight is split between the two days in proportion to time. A day total is
therefore correct whatever order its fixes arrived in, days later included.

The day's figure prefers the device odometer (highest minus lowest reading,
when the day has two readings or more and they differ by less than 2000 km): it
measures the wheels, while the GPS path cuts corners between fixes. The GPS
figure is always kept alongside.

An odometer that was reset or rolled over during the day, or that read wrong
once, leaves its earliest reading above the lowest or its latest reading below
the highest (by more than ``ODOMETER_SLACK_M``); such a day, like one whose
readings moved faster than ``max_plausible_speed_kmh`` from the first to the
last, reports the GPS path
(``distance_source`` gps, no odometer distance). Only the extremes are kept, in
any arrival order, so a misread between two correct readings that stays within
them goes unseen.

The database's daily view (``tracksolid.refresh_mileage_daily``) applies the
same rules to the same fixes (gap, steps without speed, odometer checks), with
one difference, measured on a truck recording in tests/test_derived_real.py: it
sums the steps within each local day, so the step across midnight, which the
stream shares between the two days, counts for neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from processors.distance import Fix, Placement

DAY_SECONDS = 86_400
# An odometer that moved more than this in a day was reset or misread; the GPS
# path is the better figure then. The database view applies the same limit.
MAX_ODOMETER_DAY_M = 2_000_000.0
# How far two readings may disagree without meaning a reset or a jump: counters
# that count whole kilometres tick by 1000 m between two fixes a second apart,
# and a push (metres) and a poll (kilometres, rounded) of one device differ.
ODOMETER_SLACK_M = 1_000.0


def local_day(t_ms: int, zone: ZoneInfo) -> str:
    """Return the local calendar day of an epoch-ms instant as YYYY-MM-DD."""
    return datetime.fromtimestamp(t_ms / 1000, zone).date().isoformat()


def day_start_ms(day: str, zone: ZoneInfo) -> int:
    """Return the epoch ms of local midnight starting ``day``."""
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), zone)
    return int(start.astimezone(UTC).timestamp() * 1000)


def split_by_day(a_ms: int, b_ms: int, metres: float, zone: ZoneInfo):
    """Yield ``(day, metres)`` shares of a segment, in proportion to time."""
    first, last = local_day(a_ms, zone), local_day(b_ms, zone)
    if first == last or b_ms <= a_ms:
        yield last, metres
        return
    day = date.fromisoformat(first)
    start = a_ms
    while True:
        name = day.isoformat()
        if name == last:
            yield name, metres * (b_ms - start) / (b_ms - a_ms)
            return
        end = day_start_ms((day + timedelta(days=1)).isoformat(), zone)
        yield name, metres * (end - start) / (b_ms - a_ms)
        start, day = end, day + timedelta(days=1)


@dataclass(slots=True)
class Day:
    """Running figures of one device on one local day."""

    gps_m: float = 0.0
    fixes: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    odometer_min: float | None = None
    odometer_max: float | None = None
    odometer_readings: int = 0
    # Time and value of the day's earliest and latest odometer readings.
    odometer_first: tuple[int, float] | None = None
    odometer_last: tuple[int, float] | None = None

    def see(self, fix: Fix) -> None:
        self.first_ms = fix.t if self.first_ms is None else min(self.first_ms, fix.t)
        self.last_ms = fix.t if self.last_ms is None else max(self.last_ms, fix.t)
        if fix.counted:
            self.fixes += 1
        odo = fix.odometer_m
        if odo is not None and odo > 0:
            self.odometer_readings += 1
            low, high = self.odometer_min, self.odometer_max
            self.odometer_min = odo if low is None else min(low, odo)
            self.odometer_max = odo if high is None else max(high, odo)
            if self.odometer_first is None or fix.t < self.odometer_first[0]:
                self.odometer_first = (fix.t, odo)
            if self.odometer_last is None or fix.t > self.odometer_last[0]:
                self.odometer_last = (fix.t, odo)

    def odometer_figure(self, max_plausible_kmh: float) -> float | None:
        """Return the distance the odometer measured, None when it cannot be used."""
        if self.odometer_readings < 2:
            return None
        moved = self.odometer_max - self.odometer_min
        if moved >= MAX_ODOMETER_DAY_M:
            return None
        first, last = self.odometer_first, self.odometer_last
        # State written before the first and last readings were kept lacks them.
        if first is not None and last is not None:
            if first[1] - self.odometer_min > ODOMETER_SLACK_M:
                return None
            if self.odometer_max - last[1] > ODOMETER_SLACK_M:
                return None
            hours = (last[0] - first[0]) / 3_600_000
            if moved > max_plausible_kmh * hours * 1000 + ODOMETER_SLACK_M:
                return None
        return moved

    def figure(self, max_plausible_kmh: float) -> tuple[float, str]:
        """Return the day's distance and its source, odometer or gps."""
        odo = self.odometer_figure(max_plausible_kmh)
        return (odo, "odometer") if odo is not None else (self.gps_m, "gps")

    def as_list(self) -> list:
        return [
            self.gps_m,
            self.fixes,
            self.first_ms,
            self.last_ms,
            self.odometer_min,
            self.odometer_max,
            self.odometer_readings,
            list(self.odometer_first) if self.odometer_first else None,
            list(self.odometer_last) if self.odometer_last else None,
        ]


class DayLedger:
    """The days of one device, updated by placed fixes."""

    def __init__(
        self,
        zone: ZoneInfo,
        days: dict[str, Day] | None = None,
        horizon: str | None = None,
    ) -> None:
        self.zone = zone
        self.days: dict[str, Day] = days if days is not None else {}
        # Days before the horizon were forgotten and their totals are final.
        self.horizon = horizon

    def record(self, fix: Fix, placement: Placement) -> set[str]:
        """Account one new fix and its placement; return the days it changed."""
        touched = set()
        day = self._day(local_day(fix.t, self.zone))
        if day is not None:
            day.see(fix)
            touched.add(local_day(fix.t, self.zone))
        if placement.removed is not None:
            a, b, metres = placement.removed
            touched |= self._add(a, b, -metres)
        for a, b, metres in placement.added:
            touched |= self._add(a, b, metres)
        return touched

    def _add(self, a: Fix, b: Fix, metres: float) -> set[str]:
        touched = set()
        if metres == 0.0:
            return touched
        for name, share in split_by_day(a.t, b.t, metres, self.zone):
            day = self._day(name)
            if day is not None:
                day.gps_m += share
                touched.add(name)
        return touched

    def _day(self, name: str) -> Day | None:
        day = self.days.get(name)
        if day is None:
            if self.horizon is not None and name < self.horizon:
                return None
            day = self.days[name] = Day()
        return day

    def prune(self, cutoff_ms: int) -> None:
        """Forget days that ended before ``cutoff_ms``; their totals were sent."""
        self.horizon = local_day(cutoff_ms, self.zone)
        for name in [d for d in self.days if d < self.horizon]:
            del self.days[name]

    def to_state(self) -> dict:
        days = {name: day.as_list() for name, day in self.days.items()}
        return {"horizon": self.horizon, "days": days}

    @classmethod
    def from_state(cls, zone: ZoneInfo, state: dict) -> DayLedger:
        days = {name: _day_from_list(values) for name, values in state["days"].items()}
        return cls(zone, days, state["horizon"])


def _day_from_list(values: list) -> Day:
    day = Day(*values[:7])
    if len(values) > 7:
        day.odometer_first = tuple(values[7]) if values[7] else None
        day.odometer_last = tuple(values[8]) if values[8] else None
    return day

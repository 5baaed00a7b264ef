"""Trips and stops of one device: a state machine on ignition and motion.

The machine sees a device's fixes in ``gps_time`` order and is either parked
or in a trip; an open trip may carry a candidate end (``pending``).

When the fix reports ignition (``acc_on`` True or False), ignition decides:

* parked, ignition on: a trip starts at that fix, moving or not;
* in a trip, ignition off: the fix becomes the candidate end. Ignition on again
  within ``trip_acc_flap_seconds`` cancels it (a flap, like a 1-second glitch);
  any later fix ends the trip there;
* stops with the engine running (idling at a loading bay) never end a trip.

When the fix does not report ignition (``acc_on`` None), motion decides:

* parked, moving (speed at least ``motion_min_speed_kmh``, or the implied speed
  when none is reported): a trip starts at that fix. The segment from the last
  standing fix to it was driven but lies before the trip, so such a trip misses
  up to one reporting interval of distance at its start (10 m on the 1 s GPX
  car; more on a device reporting every 30 s). The day total counts it;
* in a trip, standing still: the fix becomes the candidate end. Moving again
  within ``trip_min_stop_seconds`` cancels it (a short stop, a traffic light);
  still standing after that ends the trip at the candidate.

``trip_idle_close_seconds`` of silence from the device (wall clock) ends an
open trip at its candidate end, or at its last fix when it has none. The same
happens, on fix time, when the next fix comes more than ``max_fix_gap_seconds``
after the last one: a device switched off for days, or a clock that jumped, must
not stretch a trip over time nobody observed, whenever the fixes are processed
(live, late or replayed). The new fix may then start a trip of its own.

A trip ends at the first fix that reports ignition off (or, without ignition,
the first fix standing still), not at the fix that later confirms it: that is
when the driver parked, which is what a fleet manager reads on the report. A
device that reports ignition changes only with its next periodic fix moves the
ends by up to that period; the machine cannot know better from positions alone.

A closed span becomes a trip only when it lasts at least
``trip_min_duration_seconds`` and covers at least ``trip_min_distance_m``
(Traccar uses the same two thresholds); shorter spans are engine idling or
manoeuvres. Its distance comes from the device odometer when the span has two
readings or more and each step between consecutive readings moved forward at a
plausible speed (a wheel-based measure beats the GPS path); a counter that ran
backwards (reset, rollover) or jumped falls back to the GPS path.

The machine moves forward only: a fix older than the last one it saw changes
the path and so the distance of the trip it falls in, but not where trips
start or end.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fleetstream.settings import Settings
from processors.distance import Fix, Track, haversine_m
from processors.mileage import MAX_ODOMETER_DAY_M, ODOMETER_SLACK_M

TRIP_NAMESPACE = uuid.UUID("5d0f6f5e-3c1b-4e55-9a57-2f6a8b1c7e21")
DERIVED = "derived"
PLATFORM = "platform"


def trip_id(imei: str, start_ms: int, source: str) -> str:
    """Return the stable id of the trip of ``imei`` starting at ``start_ms``."""
    return str(uuid.uuid5(TRIP_NAMESPACE, f"{imei}|{start_ms}|{source}"))


@dataclass(frozen=True, slots=True)
class TripRules:
    """Thresholds of the trip state machine."""

    motion_min_speed_kmh: float = 5.0
    min_distance_m: float = 500.0
    min_duration_s: float = 300.0
    min_stop_s: float = 300.0
    acc_flap_s: float = 60.0
    idle_close_s: float = 300.0
    max_gap_s: float = 3600.0
    max_plausible_kmh: float = 250.0

    @classmethod
    def from_settings(cls, settings: Settings) -> TripRules:
        return cls(
            settings.motion_min_speed_kmh,
            settings.trip_min_distance_m,
            settings.trip_min_duration_seconds,
            settings.trip_min_stop_seconds,
            settings.trip_acc_flap_seconds,
            settings.trip_idle_close_seconds,
            settings.max_fix_gap_seconds,
            settings.max_plausible_speed_kmh,
        )


@dataclass(frozen=True, slots=True)
class Mark:
    """A point in time and place where a trip starts or ends."""

    t: int
    lat: float
    lng: float

    @classmethod
    def of(cls, fix: Fix) -> Mark:
        return cls(fix.t, fix.lat, fix.lng)


@dataclass(frozen=True, slots=True)
class Span:
    """A closed stretch between a trip's start and end marks."""

    start: Mark
    end: Mark

    def covers(self, t: int) -> bool:
        return self.start.t <= t <= self.end.t

    def as_list(self) -> list:
        return [*_mark(self.start), *_mark(self.end)]

    @classmethod
    def from_list(cls, v: list) -> Span:
        return cls(Mark(*v[:3]), Mark(*v[3:]))


def _mark(mark: Mark) -> list:
    return [mark.t, mark.lat, mark.lng]


ACC = "acc"
STOP = "stop"


class TripMachine:
    """Where one device is in its trip cycle; see the module docstring."""

    def __init__(self, rules: TripRules) -> None:
        self.rules = rules
        self.clock: int | None = None
        self.last: Fix | None = None
        self.start: Mark | None = None
        self.pending: Mark | None = None
        self.pending_kind: str | None = None

    @property
    def in_trip(self) -> bool:
        return self.start is not None

    def is_moving(self, fix: Fix) -> bool:
        if fix.speed_kmh is not None:
            return fix.speed_kmh >= self.rules.motion_min_speed_kmh
        prev = self.last
        if prev is None or fix.t <= prev.t:
            return False
        step = haversine_m(prev.lat, prev.lng, fix.lat, fix.lng)
        return step / ((fix.t - prev.t) / 1000) * 3.6 >= self.rules.motion_min_speed_kmh

    def step(self, fix: Fix) -> list[Span]:
        """Advance with a fix newer than any seen; return the spans it closed."""
        closed: list[Span] = []
        if (
            self.in_trip
            and self.last is not None
            and (fix.t - self.last.t) / 1000 > self.rules.max_gap_s
        ):
            closed.extend(self._close_at_last())
            self.last = None
        moving = self.is_moving(fix)
        if self.in_trip and self.pending is not None:
            self._resolve_pending(fix, moving, closed)
        if self.in_trip and self.pending is None:
            if fix.acc_on is False:
                self._hold(fix, ACC)
            elif fix.acc_on is None and not moving:
                self._hold(fix, STOP)
        if not self.in_trip and (fix.acc_on or (fix.acc_on is None and moving)):
            self.start = Mark.of(fix)
        self.clock = fix.t
        self.last = fix
        return closed

    def _resolve_pending(self, fix: Fix, moving: bool, closed: list[Span]) -> None:
        gap_s = (fix.t - self.pending.t) / 1000
        if self.pending_kind == ACC:
            if fix.acc_on is True and gap_s <= self.rules.acc_flap_s:
                self._release()
            elif gap_s > self.rules.acc_flap_s:
                closed.append(self._close())
            return
        if fix.acc_on is False:
            # Ignition, once reported, decides: the trip ends when it went off.
            self._hold(fix, ACC)
        elif moving or fix.acc_on is True:
            if gap_s >= self.rules.min_stop_s:
                closed.append(self._close())
            else:
                self._release()
        elif gap_s >= self.rules.min_stop_s:
            closed.append(self._close())

    def expire(self, silent_s: float) -> list[Span]:
        """Close the open trip after ``silent_s`` of silence from the device.

        It ends at its candidate end, or at the last fix when it had none: a
        device that stops reporting with ignition on (power cut, no coverage)
        would otherwise keep its trip open forever.
        """
        if not self.in_trip or silent_s < self.rules.idle_close_s:
            return []
        return self._close_at_last()

    def _close_at_last(self) -> list[Span]:
        if self.pending is None:
            self._hold(self.last, ACC)
        return [self._close()]

    def _hold(self, fix: Fix, kind: str) -> None:
        self.pending, self.pending_kind = Mark.of(fix), kind

    def _release(self) -> None:
        self.pending = self.pending_kind = None

    def _close(self) -> Span:
        span = Span(self.start, self.pending)
        self.start = None
        self._release()
        return span

    def to_state(self) -> dict:
        return {
            "clock": self.clock,
            "last": self.last.as_list() if self.last else None,
            "start": _mark(self.start) if self.start else None,
            "pending": _mark(self.pending) if self.pending else None,
            "pending_kind": self.pending_kind,
        }

    @classmethod
    def from_state(cls, rules: TripRules, state: dict) -> TripMachine:
        machine = cls(rules)
        machine.clock = state["clock"]
        machine.last = Fix.from_list(state["last"]) if state["last"] else None
        machine.start = Mark(*state["start"]) if state["start"] else None
        machine.pending = Mark(*state["pending"]) if state["pending"] else None
        machine.pending_kind = state["pending_kind"]
        return machine


def odometer_runs_forward(
    readings: list[tuple[int, float]], max_plausible_kmh: float
) -> bool:
    """Return whether every step between time-ordered readings is plausible.

    A step backwards is a reset or a rollover; a step faster than any vehicle
    drives is a misread or a counter set by hand. Either makes the difference
    between the first and the last reading meaningless. Both are judged with
    ``ODOMETER_SLACK_M`` to spare, for counters that tick by the kilometre.
    """
    for (t1, m1), (t2, m2) in zip(readings, readings[1:], strict=False):
        reachable = max_plausible_kmh / 3.6 * (t2 - t1) / 1000
        if m1 - m2 > ODOMETER_SLACK_M or m2 - m1 > reachable + ODOMETER_SLACK_M:
            return False
    return True


def summarise(
    imei: str,
    span: Span,
    track: Track,
    rules: TripRules,
    computed_at: int,
    device: dict | None = None,
) -> dict | None:
    """Return the Trip record of a closed span, or None when it is too short."""
    duration_s = (span.end.t - span.start.t) // 1000
    gps_m = track.distance_m(span.start.t, span.end.t)
    odometer = track.odometer_between(span.start.t, span.end.t)
    readings = track.odometer_readings(span.start.t, span.end.t)
    if (
        odometer is not None
        and odometer[1] - odometer[0] < MAX_ODOMETER_DAY_M
        and odometer_runs_forward(readings, rules.max_plausible_kmh)
    ):
        distance, source = odometer[1] - odometer[0], "odometer"
    else:
        distance, source = gps_m, "gps"
    if duration_s < rules.min_duration_s or distance < rules.min_distance_m:
        return None
    speeds = [
        f.speed_kmh
        for f in track.path_between(span.start.t, span.end.t)
        if f.speed_kmh is not None
    ]
    device = device or {}
    return {
        "trip_id": trip_id(imei, span.start.t, DERIVED),
        "imei": imei,
        "source": DERIVED,
        "start_time": span.start.t,
        "end_time": span.end.t,
        "start_lat": span.start.lat,
        "start_lng": span.start.lng,
        "end_lat": span.end.lat,
        "end_lng": span.end.lng,
        "distance_m": distance,
        "distance_source": source,
        "gps_distance_m": gps_m,
        "duration_s": duration_s,
        "max_speed_kmh": max(speeds) if speeds else None,
        "avg_speed_kmh": distance / duration_s * 3.6 if duration_s else None,
        "start_odometer_m": odometer[0] if odometer else None,
        "end_odometer_m": odometer[1] if odometer else None,
        "driver_name": device.get("driver_name"),
        "vehicle_number": device.get("vehicle_number"),
        "computed_at": computed_at,
    }

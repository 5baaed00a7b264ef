"""Replay real vehicle recordings as live Tracksolid devices.

Each recording in ``data/traces`` becomes one :class:`Trace`: its fixes as
offsets from the trace start, each with the offset at which the platform
received it. :class:`Replay` places traces on the wall clock (a start instant,
a speed-up, optional looping) and answers what a platform would know at a given
instant: which fixes arrived in a window, a device's track, its latest fix.

Sources and the liberties taken with them:

* drvr trucks (Myanmar, 2018): the fix time is ``pos.posTime``; the delivery
  time is ``receivedTs``, so lateness, file-order inversions and repeated fixes
  are the recorded ones. Ignition comes from ``vehicle-ign-on``/``-off`` events,
  the odometer from the CAN ``totDist`` counter (100 m units); a counter that
  reads 0 throughout (truck-A) means the truck has no CAN odometer.
* Višnjan GPX car (2020): speed and heading are derived from consecutive points;
  ignition is unknown. Delivery is taken as immediate: the file records no
  reception times.
* Denver drives: the CSV files hold no timestamps, so one row per second is
  assumed; speed and heading are derived as for the GPX car.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetstream.geo import haversine_m

logger = logging.getLogger(__name__)

TRACES_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"

# Pause between two passes of a looping trace, in trace seconds.
DEFAULT_LOOP_GAP_S = 30.0

PLATFORM_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Float margin on window look-ups; the exact test is on the instants themselves.
SLACK_S = 1e-3


@dataclass(frozen=True)
class TracePoint:
    """One recorded fix; times are seconds after the trace's first fix."""

    offset_s: float
    delivery_offset_s: float
    lat: float
    lng: float
    speed_kmh: float | None
    direction: int | None
    altitude_m: float | None
    acc_on: bool | None
    odometer_m: float | None


@dataclass(frozen=True)
class Trace:
    """One vehicle's recording, points in the order the platform received them."""

    name: str
    imei: str
    plate: str
    driver: str | None
    points: tuple[TracePoint, ...]
    duration_s: float


@dataclass(frozen=True)
class _Vehicle:
    name: str
    plate: str
    driver: str | None
    read: Callable[[], list[TracePoint]]


def luhn_check_digit(digits: str) -> str:
    """Return the Luhn check digit that completes ``digits``."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def is_valid_imei(imei: str) -> bool:
    """Return whether ``imei`` has 15 digits and a correct Luhn check digit."""
    return (
        len(imei) == 15 and imei.isdigit() and luhn_check_digit(imei[:14]) == imei[14]
    )


def fake_imei(name: str) -> str:
    """Return a stable, Luhn-valid 15-digit IMEI derived from a trace name."""
    # 86 is the reporting-body prefix real Jimi devices carry; the rest comes
    # from a hash so the number never changes between runs.
    body = "86" + str(int(hashlib.sha256(name.encode()).hexdigest(), 16))[:12]
    return body + luhn_check_digit(body)


def format_platform_time(instant: datetime) -> str:
    """Format an instant the way the platform does: UTC ``yyyy-MM-dd HH:mm:ss``."""
    return instant.astimezone(UTC).strftime(PLATFORM_TIME_FORMAT)


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _seconds_between(start: datetime, end: datetime) -> float:
    # Whole microseconds, so an offset turned back into a timedelta is exact.
    return ((end - start) // timedelta(microseconds=1)) / 1_000_000


def _bearing_deg(lat1: float, lng1: float, lat2: float, lng2: float) -> int:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlmb = math.radians(lng2 - lng1)
    y = math.sin(dlmb) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(
        dlmb
    )
    return round(math.degrees(math.atan2(y, x)) % 360) % 360


def _derived_points(
    rows: Sequence[tuple[float, float, float, float | None]],
) -> list[TracePoint]:
    """Build points from (offset, lat, lng, altitude) rows, deriving motion."""
    points = []
    direction: int | None = None
    for index, (offset, lat, lng, altitude) in enumerate(rows):
        # Each point takes the motion of the segment that ends at it; the first
        # point takes that of the segment that starts at it.
        a, b = (index - 1, index) if index else (0, 1)
        speed = 0.0
        if b < len(rows):
            (t1, lat1, lng1, _), (t2, lat2, lng2, _) = rows[a], rows[b]
            metres = haversine_m(lat1, lng1, lat2, lng2)
            if t2 > t1:
                speed = round(metres / (t2 - t1) * 3.6, 1)
            if metres > 0:
                # A standing vehicle keeps the heading it last had.
                direction = _bearing_deg(lat1, lng1, lat2, lng2)
        points.append(
            TracePoint(
                offset_s=offset,
                delivery_offset_s=offset,
                lat=lat,
                lng=lng,
                speed_kmh=speed,
                direction=direction,
                altitude_m=altitude,
                acc_on=None,
                odometer_m=None,
            )
        )
    return points


def _read_drvr(*files: str) -> list[TracePoint]:
    """Read drvr event files as one continuous recording."""
    events = []
    for file in files:
        with (TRACES_DIR / "drvr-trucks-myanmar" / file).open(encoding="utf-8") as f:
            events.extend(json.load(f))
    odometer_at = {
        event["ev"]["ts"]: event["ev"]["telemetryInfo"].get("totDist", 0) * 100.0
        for event in events
        if event["type"] == "vehicle-telemetry"
    }
    has_odometer = any(value > 0 for value in odometer_at.values())
    positions = [e["ev"] for e in events if e["type"] == "vehicle-position"]
    start = min(_parse_iso(ev["pos"]["posTime"]) for ev in positions)

    points = []
    acc_on: bool | None = None
    odometer: float | None = None
    for event in events:
        kind, ev = event["type"], event["ev"]
        if kind == "vehicle-ign-on":
            acc_on = True
        elif kind == "vehicle-ign-off":
            acc_on = False
        if has_odometer and ev["ts"] in odometer_at:
            # Telemetry shares its event time with the position it rides along
            # with but follows it in the file, so look it up by that time.
            odometer = odometer_at[ev["ts"]]
        if kind != "vehicle-position":
            continue
        fix = _parse_iso(ev["pos"]["posTime"])
        received = _parse_iso(ev.get("receivedTs", ev["ts"]))
        offset = _seconds_between(start, fix)
        pos = ev["pos"]
        points.append(
            TracePoint(
                offset_s=offset,
                delivery_offset_s=max(offset, _seconds_between(start, received)),
                lat=pos["latlon"]["lat"],
                lng=pos["latlon"]["lng"],
                speed_kmh=pos.get("speed"),
                direction=None if pos.get("azimuth") is None else int(pos["azimuth"]),
                altitude_m=pos.get("altitude"),
                acc_on=acc_on,
                odometer_m=odometer,
            )
        )
    return points


def _read_gpx(file: str) -> list[TracePoint]:
    ns = {"gpx": "http://www.topografix.com/GPX/1/1"}
    root = ET.parse(TRACES_DIR / "gpxpy-car-visnjan" / file).getroot()
    raw = []
    for pt in root.iterfind(".//gpx:trkpt", ns):
        ele = pt.find("gpx:ele", ns)
        raw.append(
            (
                _parse_iso(pt.findtext("gpx:time", namespaces=ns)),
                float(pt.get("lat")),
                float(pt.get("lon")),
                None if ele is None else float(ele.text),
            )
        )
    start = min(row[0] for row in raw)
    rows = [(_seconds_between(start, t), lat, lng, alt) for t, lat, lng, alt in raw]
    return _derived_points(rows)


def _read_denver(file: str) -> list[TracePoint]:
    with (TRACES_DIR / "mappymatch-denver" / file).open(encoding="utf-8") as f:
        rows = [
            # No timestamps in the file: one row per second is an assumption.
            (float(index), float(row["latitude"]), float(row["longitude"]), None)
            for index, row in enumerate(csv.DictReader(f))
        ]
    return _derived_points(rows)


_VEHICLES = (
    _Vehicle(
        "truck-A",
        "kza 123a",
        "Wanjiru Kamau",
        lambda: _read_drvr(
            "truck-A_2018-05-03_part1.json", "truck-A_2018-05-03_part2.json"
        ),
    ),
    _Vehicle(
        "truck-B",
        "KZB-456B",
        "Otieno Ouma",
        lambda: _read_drvr("truck-B_2018-05-04.json"),
    ),
    _Vehicle(
        "visnjan-car",
        "KCX 789C ",
        "Amina Hassan",
        lambda: _read_gpx("around-visnjan-with-car.gpx"),
    ),
    _Vehicle(
        "denver-1",
        "kda012d",
        "Peter Mwangi",
        lambda: _read_denver("sample_trace_1.csv"),
    ),
    _Vehicle("denver-2", "KDB  345E", None, lambda: _read_denver("sample_trace_2.csv")),
    _Vehicle(
        "denver-3",
        "Kdc-678F",
        "Grace Achieng",
        lambda: _read_denver("sample_trace_3.csv"),
    ),
)

TRACE_NAMES = tuple(vehicle.name for vehicle in _VEHICLES)


def load_traces(names: Iterable[str] | None = None) -> list[Trace]:
    """Load the named traces (all of them by default) from ``data/traces``."""
    by_name = {vehicle.name: vehicle for vehicle in _VEHICLES}
    wanted = TRACE_NAMES if names is None else tuple(names)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"unknown trace names {unknown}; known: {list(TRACE_NAMES)}")
    traces = []
    for name in wanted:
        vehicle = by_name[name]
        points = tuple(vehicle.read())
        traces.append(
            Trace(
                name=name,
                imei=fake_imei(name),
                plate=vehicle.plate,
                driver=vehicle.driver,
                points=points,
                duration_s=max(p.offset_s for p in points),
            )
        )
        logger.debug("loaded trace %s with %s points", name, len(points))
    return traces


def is_valid_fix(point: TracePoint) -> bool:
    """Return whether a fix has a usable position (in range, not the 0/0 null)."""
    return (
        -90.0 <= point.lat <= 90.0
        and -180.0 <= point.lng <= 180.0
        and not (point.lat == 0.0 and point.lng == 0.0)
    )


def expected_fixes(trace: Trace) -> set[float]:
    """Return the offsets of the unique valid fixes a correct pipeline stores."""
    return {p.offset_s for p in trace.points if is_valid_fix(p)}


@dataclass(frozen=True)
class Delivery:
    """One fix as the platform receives it during a replay."""

    trace: Trace
    point: TracePoint
    gps_time: datetime
    delivered_at: datetime
    pass_index: int
    # The first and the last fix a pass delivers: the device comes online and
    # goes quiet there.
    first_of_pass: bool
    last_of_pass: bool


class _Placed:
    """One trace's points indexed for window queries."""

    def __init__(self, trace: Trace, start: datetime) -> None:
        self.trace = trace
        self.start = start
        self.by_delivery = sorted(trace.points, key=lambda p: p.delivery_offset_s)
        self.delivery_keys = [p.delivery_offset_s for p in self.by_delivery]
        self.by_fix = sorted(trace.points, key=lambda p: p.offset_s)
        self.fix_keys = [p.offset_s for p in self.by_fix]
        self.max_delivery_s = self.delivery_keys[-1]
        # Newest fix among the first n points by delivery, for latest().
        self.newest_upto: list[TracePoint] = []
        for point in self.by_delivery:
            best = self.newest_upto[-1] if self.newest_upto else point
            self.newest_upto.append(point if point.offset_s >= best.offset_s else best)


class Replay:
    """Place traces on the wall clock: a start instant, a speed-up, looping.

    Trace time runs ``speedup`` times faster than the wall clock; fix times are
    compressed with it, so at speed-ups above a trace's fix spacing two fixes
    can fall in the same platform second. Pass ``n`` of a looping trace is shifted
    by ``n * (duration_s + gap_s)`` trace seconds, so fix times strictly advance
    from one pass to the next while late deliveries may overlap the next pass.
    ``starts`` gives named traces their own start instant instead of ``start``.
    """

    def __init__(
        self,
        traces: Iterable[Trace],
        start: datetime,
        speedup: float = 1.0,
        loop: bool = True,
        *,
        gap_s: float = DEFAULT_LOOP_GAP_S,
        starts: dict[str, datetime] | None = None,
    ) -> None:
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        if gap_s <= 0:
            raise ValueError(f"gap_s must be positive, got {gap_s}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.traces = list(traces)
        self.start = start
        self.speedup = speedup
        self.loop = loop
        self.gap_s = gap_s
        starts = starts or {}
        self._placed = {
            t.imei: _Placed(t, starts.get(t.name, start)) for t in self.traces
        }

    def period_s(self, trace: Trace) -> float:
        """Return the trace seconds between the starts of two consecutive passes."""
        return trace.duration_s + self.gap_s

    def instant(self, trace: Trace, pass_index: int, offset_s: float) -> datetime:
        """Return the wall-clock instant of a trace offset in a given pass."""
        placed = self._placed[trace.imei]
        trace_s = pass_index * self.period_s(trace) + offset_s
        return placed.start + timedelta(seconds=trace_s / self.speedup)

    def _trace_seconds(self, placed: _Placed, instant: datetime) -> float:
        return (instant - placed.start).total_seconds() * self.speedup

    def _passes(self, placed: _Placed, low_s: float, high_s: float) -> range:
        """Return the passes whose offsets [0, span] can meet [low_s, high_s]."""
        if high_s < -SLACK_S:
            return range(0)
        period = self.period_s(placed.trace)
        span = max(placed.max_delivery_s, placed.trace.duration_s)
        first = max(0, math.floor((low_s - span - SLACK_S) / period))
        last = math.floor((high_s + SLACK_S) / period) if self.loop else 0
        return range(first, last + 1)

    def deliveries(self, since: datetime, until: datetime) -> list[Delivery]:
        """Return every fix delivered in (since, until], in delivery order."""
        found = []
        for placed in self._placed.values():
            trace = placed.trace
            low = self._trace_seconds(placed, since)
            high = self._trace_seconds(placed, until)
            last = len(placed.by_delivery) - 1
            for n in self._passes(placed, low, high):
                base = n * self.period_s(trace)
                i = bisect.bisect_left(placed.delivery_keys, low - base - SLACK_S)
                j = bisect.bisect_right(placed.delivery_keys, high - base + SLACK_S)
                for index in range(i, j):
                    point = placed.by_delivery[index]
                    at = self.instant(trace, n, point.delivery_offset_s)
                    if since < at <= until:
                        gps = self.instant(trace, n, point.offset_s)
                        found.append(
                            Delivery(
                                trace, point, gps, at, n, index == 0, index == last
                            )
                        )
        found.sort(key=lambda delivery: delivery.delivered_at)
        return found

    def delivered(
        self, since: datetime, until: datetime
    ) -> list[tuple[Trace, TracePoint, datetime]]:
        """Return (trace, point, gps_time) delivered in (since, until], by delivery."""
        return [(d.trace, d.point, d.gps_time) for d in self.deliveries(since, until)]

    def fixes(
        self, imei: str, begin: datetime, end: datetime, now: datetime
    ) -> list[tuple[datetime, TracePoint]]:
        """Return fixes with gps_time in [begin, end] delivered by ``now``, by time."""
        placed = self._placed.get(imei)
        if placed is None:
            return []
        trace = placed.trace
        low = self._trace_seconds(placed, begin)
        high = self._trace_seconds(placed, end)
        found = []
        for n in self._passes(placed, low, high):
            base = n * self.period_s(trace)
            i = bisect.bisect_left(placed.fix_keys, low - base - SLACK_S)
            j = bisect.bisect_right(placed.fix_keys, high - base + SLACK_S)
            for point in placed.by_fix[i:j]:
                gps = self.instant(trace, n, point.offset_s)
                delivered_at = self.instant(trace, n, point.delivery_offset_s)
                if begin <= gps <= end and delivered_at <= now:
                    found.append((gps, delivered_at, point))
        found.sort(key=lambda item: (item[0], item[1]))
        return [(gps, point) for gps, _, point in found]

    def latest(self, imei: str, now: datetime) -> tuple[datetime, TracePoint] | None:
        """Return the newest fix (by gps_time) delivered by ``now``."""
        placed = self._placed.get(imei)
        if placed is None:
            return None
        trace = placed.trace
        now_s = self._trace_seconds(placed, now)
        best: tuple[datetime, TracePoint] | None = None
        for n in self._passes(placed, now_s, now_s):
            base = n * self.period_s(trace)
            j = bisect.bisect_right(placed.delivery_keys, now_s - base + SLACK_S)
            # Step back over points the slack admitted but that arrive after now.
            while (
                j
                and self.instant(trace, n, placed.by_delivery[j - 1].delivery_offset_s)
                > now
            ):
                j -= 1
            if not j:
                continue
            point = placed.newest_upto[j - 1]
            gps = self.instant(trace, n, point.offset_s)
            if best is None or gps > best[0]:
                best = (gps, point)
        return best


def history_replay(traces: Iterable[Trace], now: datetime) -> Replay:
    """Place every trace once, wholly in the past, its last delivery just before now.

    Starts are whole seconds (when ``now`` is), so fix times are whole seconds too
    and survive the platform's second-precision time format unchanged.
    """
    traces = list(traces)
    starts = {
        t.name: (
            now - timedelta(seconds=max(p.delivery_offset_s for p in t.points))
        ).replace(microsecond=0)
        for t in traces
    }
    return Replay(traces, min(starts.values(), default=now), 1.0, False, starts=starts)

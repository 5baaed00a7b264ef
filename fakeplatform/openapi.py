"""The fake platform's Open API: ``/route/rest`` methods answered from a Replay.

The fake checks what the real service checks (signature when ``v=1.0``,
timestamp within ten minutes, tokens and their expiry, window and batch limits)
and reproduces the quirks integrators report: numbers sent as strings in some
rows and as numbers in others, ``null`` and empty strings, ``posType`` as text
in the location methods and as a number in the track list, ISO-Z times in the
parking report, devices silently missing from ``location.list`` and an expired
unit at 0,0. Faults (1004, 1006, -1) are injected on demand.

Tokens expire on :class:`FakeClock`, which tests can move forward. Request
timestamps and the Replay's data follow the wall clock, so advancing the token
clock never makes a client's signature stale.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from fakeplatform.traces import (
    Replay,
    Trace,
    TracePoint,
    fake_imei,
    format_platform_time,
    is_valid_fix,
)

logger = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_TRACK_WINDOW = timedelta(days=7)
MAX_ALARM_WINDOW = timedelta(days=31)
TRACK_RETENTION = timedelta(days=92)
# Longer than any silence between two fixes of the recorded traces.
ALARM_CONTEXT = timedelta(minutes=10)
# How far before a trip report window the fake looks for the start of a trip.
TRIP_CONTEXT = timedelta(days=1)
# Alarm type id of a terminal overspeed alarm (Jimi's catalogue).
DEVICE_OVERSPEED = "6"
MAX_IMEIS = 100
MAX_ALARM_ROWS = 1000
# A silence longer than this between two fixes is a parking.
TRIP_GAP = timedelta(minutes=5)
EXPIRED_IMEI = fake_imei("expired-unit")
# Request parameters the call record leaves out.
SECRET_PARAMS = frozenset(
    {"sign", "access_token", "refresh_token", "user_pwd_md5", "app_key"}
)

PARAM_ERROR = 1001
ILLEGAL_DEVICE = 1002
TOKEN_INVALID = 1004
RATE_LIMITED = 1006


class FakeApiError(Exception):
    """Answer the current call with a non-zero code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FakeConfig:
    """Credentials, limits and fault injection of the fake Open API."""

    app_key: str = "FAKEAPPKEY00000000000000000000AA"
    app_secret: str = "fakeSecret0000000000000000000001"
    user_id: str = "fleet_demo_ke"
    user_pwd_md5: str = "ade6f4c69547af4c917e92d6548c229a"
    # Lifetime granted to tokens: the smaller of this and the requested one.
    token_expires_in_seconds: int = 7200
    refresh_fails: bool = False
    timestamp_tolerance_seconds: float = 600.0
    # Fault injection: the next ``fail_next`` calls, and every ``fail_every``-th
    # call, of ``fail_methods`` (all methods when empty) answer ``fail_code``.
    fail_code: int = RATE_LIMITED
    fail_next: int = 0
    fail_every: int = 0
    fail_methods: list[str] = field(default_factory=list)
    # Rate limit: at most this many calls per window (0 = unlimited); the token
    # endpoint has its own, stricter budget.
    window_calls: int = 0
    window_seconds: float = 60.0
    token_window_calls: int = 10
    token_window_seconds: float = 60.0
    # Devices that location.list leaves out without saying so.
    omit_imeis: list[str] = field(default_factory=list)
    # Sub-account name -> IMEIs that belong to it instead of the main account.
    child_accounts: dict[str, list[str]] = field(default_factory=dict)
    mileage_unit: str = "km"
    # Serve page 1 whatever page_no says, as for a client sending a wrong name.
    ignore_page_no: bool = False
    # report.parking: the number start_row gives the first row (0: start_row is
    # an offset; 1: rows count from 1, and 0 is read as 1), and the
    # [start_row, page_size] pairs it answers with 1001, as integrators report.
    parking_row_base: int = 0
    parking_refused_pagings: list[list[int]] = field(default_factory=list)
    include_expired_device: bool = True
    # Method -> elements appended to the list it answers, for a platform that
    # sends something other than a record (a number, null, a string).
    stray_rows: dict[str, list[Any]] = field(default_factory=dict)
    overspeed_kmh: float = 80.0
    # A standstill this long is a parking and ends a trip.
    parking_min_seconds: float = 120.0

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fake config fields {sorted(unknown)}")
        for name, value in changes.items():
            setattr(self, name, value)


class FakeClock:
    """Wall-clock time plus an offset that tests can advance."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Call:
    """One request the fake answered, for tests to inspect."""

    method: str
    at: float
    code: int
    params: dict[str, str] = field(default_factory=dict)


def fake_sign(params: dict[str, str], secret: str) -> str:
    """Return the platform's MD5 signature of ``params``, computed independently."""
    body = "".join(
        f"{name}{params[name]}"
        for name in sorted(params)
        if name != "sign" and params[name]
    )
    return hashlib.md5(f"{secret}{body}{secret}".encode()).hexdigest().upper()


def _mixed(value: float | int, key: str) -> float | int | str:
    """Return ``value`` as a number or as its string, stably per ``key``."""
    return str(value) if hashlib.md5(key.encode()).digest()[0] % 2 else value


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _parse_time(text: str | None, name: str) -> datetime:
    try:
        return datetime.strptime(text or "", TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise FakeApiError(PARAM_ERROR, f"{name} must be yyyy-MM-dd HH:mm:ss") from None


def _distance_km(points: list[tuple[datetime, TracePoint]]) -> float:
    total = 0.0
    for (_, a), (_, b) in zip(points, points[1:], strict=False):
        phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
        dphi, dlmb = phi2 - phi1, math.radians(b.lng - a.lng)
        h = (
            math.sin(dphi / 2) ** 2
            + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
        )
        total += 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))
    return total


Fix = tuple[datetime, TracePoint]


def _stopped(fix: Fix) -> bool:
    return (fix[1].speed_kmh or 0.0) < 1.0


def _split(fixes: list[Fix], min_stop: timedelta) -> tuple[list[list[Fix]], list]:
    """Return the trips (runs of fixes between stops) and the stops (first, last).

    A stop is a standstill lasting at least ``min_stop``, or a silence longer
    than TRIP_GAP between two fixes.
    """
    bounds: list[tuple[int, int]] = []
    i = 0
    while i < len(fixes):
        j = i
        while (
            _stopped(fixes[i])
            and j + 1 < len(fixes)
            and _stopped(fixes[j + 1])
            and fixes[j + 1][0] - fixes[j][0] <= TRIP_GAP
        ):
            j += 1
        if _stopped(fixes[i]) and fixes[j][0] - fixes[i][0] >= min_stop:
            bounds.append((i, j))
        i = j + 1
    bounds += [
        (k, k + 1)
        for k in range(len(fixes) - 1)
        if fixes[k + 1][0] - fixes[k][0] > TRIP_GAP
    ]
    bounds.sort()
    trips, start = [], 0
    for first, last in bounds:
        if first > start:
            trips.append(fixes[start : first + 1])
        start = max(start, last)
    if start < len(fixes) - 1:
        trips.append(fixes[start:])
    return trips, [(fixes[a], fixes[b]) for a, b in bounds]


class FakeOpenApi:
    """Answer Open API requests from a Replay, with configurable faults."""

    def __init__(
        self,
        config: FakeConfig,
        replay: Replay,
        clock: FakeClock | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.replay = replay
        self.clock = clock or FakeClock()
        self.wall = wall
        self.calls: list[Call] = []
        self._tokens: dict[str, datetime] = {}
        self._refresh: dict[str, str] = {}
        # Every access and refresh token handed out, for tests hunting leaks.
        self.issued: list[str] = []
        self._recent: deque[float] = deque()
        self._recent_token: deque[float] = deque()
        self._counts: dict[str, int] = {}
        self._traces = {t.imei: t for t in replay.traces}
        self._handlers: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
            "jimi.oauth.token.get": self._token_get,
            "jimi.oauth.token.refresh": self._token_refresh,
            "jimi.user.child.list": self._child_list,
            "jimi.user.device.list": self._device_list,
            "jimi.user.device.location.list": self._location_list,
            "jimi.device.location.get": self._location_get,
            "jimi.device.track.list": self._track_list,
            "jimi.device.track.mileage": self._track_mileage,
            "jimi.device.alarm.list": self._alarm_list,
            "jimi.open.platform.report.parking": self._report_parking,
        }

    def configure(self, changes: dict[str, Any]) -> None:
        """Apply config changes; ``advance_clock_seconds`` moves the token clock."""
        changes = dict(changes)
        advance = changes.pop("advance_clock_seconds", None)
        self.config.update(changes)
        if advance:
            self.clock.advance(float(advance))

    def handle(self, params: dict[str, str]) -> dict[str, Any]:
        """Answer one request given its merged query and form parameters."""
        method = params.get("method", "")
        try:
            body = self._dispatch(method, params)
            code = 0
        except FakeApiError as exc:
            body = {
                "code": exc.code,
                "message": exc.message,
                "result": None,
                "data": None,
            }
            code = exc.code
        shown = {k: v for k, v in params.items() if k not in SECRET_PARAMS}
        self.calls.append(Call(method, time.monotonic(), code, shown))
        return body

    def _dispatch(self, method: str, params: dict[str, str]) -> dict[str, Any]:
        handler = self._handlers.get(method)
        if handler is None:
            raise FakeApiError(PARAM_ERROR, f"unknown method {method!r}")
        self._check_request(params)
        self._inject_faults(method)
        # The refresh call checks its own refresh token: it is made precisely
        # when the access token has expired.
        if method not in ("jimi.oauth.token.get", "jimi.oauth.token.refresh"):
            self._check_token(method, params)
        body = handler(params)
        stray = self.config.stray_rows.get(method)
        if stray:
            rows = body.get("result")
            if not isinstance(rows, list):
                rows = (body.get("data") or {}).get("rows")
            rows.extend(stray)
        return body

    def _check_request(self, params: dict[str, str]) -> None:
        if params.get("app_key") != self.config.app_key:
            raise FakeApiError(PARAM_ERROR, "app_key is invalid")
        if params.get("v", "1.0") == "1.0":
            expected = fake_sign(params, self.config.app_secret)
            if params.get("sign", "").upper() != expected:
                raise FakeApiError(PARAM_ERROR, "sign is invalid")
        stamp = _parse_time(params.get("timestamp"), "timestamp")
        skew = abs((stamp - self.wall()).total_seconds())
        if skew > self.config.timestamp_tolerance_seconds:
            raise FakeApiError(PARAM_ERROR, "timestamp is out of the allowed range")

    def _inject_faults(self, method: str) -> None:
        config = self.config
        now = time.monotonic()
        if method == "jimi.oauth.token.get" and config.token_window_calls:
            if self._over_budget(
                self._recent_token,
                now,
                config.token_window_calls,
                config.token_window_seconds,
            ):
                raise FakeApiError(
                    RATE_LIMITED, "Illegal access, too frequently request!"
                )
        if config.window_calls and self._over_budget(
            self._recent, now, config.window_calls, config.window_seconds
        ):
            raise FakeApiError(RATE_LIMITED, "Illegal access, too frequently request!")
        if config.fail_methods and method not in config.fail_methods:
            return
        self._counts[method] = self._counts.get(method, 0) + 1
        if config.fail_next > 0:
            config.fail_next -= 1
            raise FakeApiError(config.fail_code, "injected failure")
        if config.fail_every and self._counts[method] % config.fail_every == 0:
            raise FakeApiError(config.fail_code, "injected failure")

    @staticmethod
    def _over_budget(recent: deque[float], now: float, calls: int, window: float):
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= calls:
            return True
        recent.append(now)
        return False

    def _check_token(self, method: str, params: dict[str, str]) -> None:
        expires = self._tokens.get(params.get("access_token", ""))
        if expires is None or expires <= self.clock.now():
            raise FakeApiError(
                TOKEN_INVALID,
                "Illegal access, token exception! (Token failure or nonexistent)",
            )

    # Tokens

    def _issue(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            wanted = int(params.get("expires_in") or 7200)
        except ValueError:
            raise FakeApiError(PARAM_ERROR, "expires_in must be a number") from None
        if not 60 <= wanted <= 7200:
            raise FakeApiError(PARAM_ERROR, "expires_in must be 60 to 7200")
        lifetime = min(wanted, self.config.token_expires_in_seconds)
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        now = self.clock.now()
        self._tokens[access] = now + timedelta(seconds=lifetime)
        self._refresh[refresh] = access
        self.issued += [access, refresh]
        result = {
            "appKey": self.config.app_key,
            "account": self.config.user_id,
            "accessToken": access,
            # The platform's own examples disagree on the type.
            "expiresIn": str(lifetime) if len(self._tokens) % 2 else lifetime,
            "refreshToken": refresh,
            "time": format_platform_time(now),
        }
        return {"code": 0, "message": "success", "result": result}

    def _token_get(self, params: dict[str, str]) -> dict[str, Any]:
        if (
            params.get("user_id") != self.config.user_id
            or params.get("user_pwd_md5") != self.config.user_pwd_md5
        ):
            raise FakeApiError(PARAM_ERROR, "Incorrect user name or password")
        return self._issue(params)

    def _token_refresh(self, params: dict[str, str]) -> dict[str, Any]:
        refresh = params.get("refresh_token", "")
        if self.config.refresh_fails or refresh not in self._refresh:
            raise FakeApiError(TOKEN_INVALID, "Illegal request，token is invalid")
        old = self._refresh.pop(refresh)
        self._tokens.pop(old, None)
        return self._issue(params)

    # Registry

    def _owner(self, imei: str) -> str:
        for account, imeis in self.config.child_accounts.items():
            if imei in imeis:
                return account
        return self.config.user_id

    def _accounts(self) -> set[str]:
        return {self.config.user_id, *self.config.child_accounts}

    def _target(self, params: dict[str, str]) -> str:
        target = params.get("target") or self.config.user_id
        if target not in self._accounts():
            raise FakeApiError(ILLEGAL_DEVICE, "The account does not exist")
        return target

    def _imeis(self) -> list[str]:
        imeis = list(self._traces)
        if self.config.include_expired_device:
            imeis.append(EXPIRED_IMEI)
        return imeis

    def _device(self, imei: str) -> dict[str, Any]:
        trace = self._traces.get(imei)
        if trace is None:
            return {
                "imei": imei,
                "deviceName": imei,
                "mcType": "GT06N",
                "mcTypeUseScope": "automobile",
                "sim": "",
                "expiration": "2024-12-31 23:59:59",
                "activationTime": "2023-12-30 14:40:00",
                "reMark": "expired unit",
                "vehicleName": None,
                "vehicleIcon": "automobile",
                "vehicleNumber": "",
                "vehicleModels": None,
                "carFrame": None,
                "driverName": "",
                "driverPhone": "",
                "enabledFlag": 0,
                "engineNumber": None,
                "deviceGroupId": "f9e8d7c6b5a4938271605f4e3d2c1b0a",
                "deviceGroup": "Workshop",
            }
        truck = trace.name.startswith("truck")
        return {
            "imei": imei,
            "deviceName": trace.plate.strip() or imei,
            "mcType": "JC400P" if truck else "VL802",
            "mcTypeUseScope": "automobile",
            "sim": "2547" + imei[-8:] if truck else "",
            "expiration": "2035-03-31 23:59:59",
            "activationTime": "2024-04-02 08:15:11",
            "reMark": None if truck else "",
            "vehicleName": trace.name,
            "vehicleIcon": "truck" if truck else "automobile",
            "vehicleNumber": trace.plate,
            "vehicleModels": "Generic Truck" if truck else None,
            "carFrame": "",
            "driverName": trace.driver,
            "driverPhone": None,
            "enabledFlag": 1,
            "engineNumber": None,
            "deviceGroupId": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "deviceGroup": "Default group",
        }

    def _child_list(self, params: dict[str, str]) -> dict[str, Any]:
        target = self._target(params)
        children = (
            [
                {"account": name, "name": name, "type": 3, "showName": name}
                for name in sorted(self.config.child_accounts)
            ]
            if target == self.config.user_id
            else []
        )
        return {"code": 0, "message": "success", "result": children}

    def _device_list(self, params: dict[str, str]) -> dict[str, Any]:
        target = self._target(params)
        rows = [self._device(i) for i in self._imeis() if self._owner(i) == target]
        return {"code": 0, "message": "success", "result": rows}

    # Locations

    def _location(self, imei: str, now: datetime) -> dict[str, Any]:
        trace = self._traces.get(imei)
        latest = self.replay.latest(imei, now) if trace else None
        if latest is None:
            return self._no_fix(imei, trace)
        gps, point = latest
        moving = bool(point.speed_kmh)
        return {
            "imei": imei,
            "deviceName": trace.plate.strip() or imei,
            "icon": "truck" if trace.name.startswith("truck") else "automobile",
            "status": "1" if now - gps < timedelta(minutes=10) else "0",
            "posType": "GPS",
            "lat": round(point.lat, 6),
            "lng": round(point.lng, 6),
            "hbTime": format_platform_time(now),
            "gpsTime": format_platform_time(gps),
            "speed": str(round(point.speed_kmh or 0)),
            "direction": str(point.direction if point.direction is not None else -1),
            "accStatus": None if point.acc_on is None else str(int(point.acc_on)),
            "activationFlag": "1",
            "expireFlag": "1",
            "electQuantity": "100" if moving else "",
            "powerValue": "12.61" if moving else None,
            "batteryPowerVal": None,
            "gpsSignal": "4",
            "gpsNum": "11",
            "distance": None,
            "currentMileage": (
                None if point.odometer_m is None else f"{point.odometer_m / 1000:.1f}"
            ),
            "temperature": None,
            "trackerOil": None,
            "locDesc": None,
        }

    def _no_fix(self, imei: str, trace: Trace | None) -> dict[str, Any]:
        expired = trace is None
        return {
            "imei": imei,
            "deviceName": imei if expired else trace.plate.strip(),
            "icon": "automobile",
            "status": "0",
            "posType": "GPS",
            "lat": 0,
            "lng": 0,
            "hbTime": "2024-12-31 21:59:00" if expired else "",
            "gpsTime": "2024-12-31 21:58:31" if expired else "",
            "speed": "0",
            "direction": "0",
            "accStatus": "0",
            "activationFlag": "1",
            "expireFlag": "0" if expired else "1",
            "electQuantity": "",
            "powerValue": None,
            "batteryPowerVal": None,
            "gpsSignal": "0",
            "gpsNum": "0",
            "distance": None,
            "currentMileage": None,
            "temperature": None,
            "trackerOil": None,
            "locDesc": None,
        }

    def _location_list(self, params: dict[str, str]) -> dict[str, Any]:
        target = self._target(params)
        now = self.wall()
        omitted = set(self.config.omit_imeis)
        rows = [
            self._location(imei, now)
            for imei in self._imeis()
            if self._owner(imei) == target and imei not in omitted
        ]
        return {"code": 0, "message": "success", "result": rows}

    def _location_get(self, params: dict[str, str]) -> dict[str, Any]:
        imeis = self._imei_list(params.get("imeis"))
        now = self.wall()
        rows = []
        for imei in imeis:
            if imei not in self._imeis():
                continue
            row = self._location(imei, now)
            row["account"] = self._owner(imei)
            row["customerName"] = self._owner(imei)
            rows.append(row)
        return {"code": 0, "message": "success", "result": rows}

    @staticmethod
    def _imei_list(text: str | None) -> list[str]:
        imeis = [i.strip() for i in (text or "").split(",") if i.strip()]
        if not imeis:
            raise FakeApiError(PARAM_ERROR, "imeis is required")
        if len(imeis) > MAX_IMEIS:
            raise FakeApiError(PARAM_ERROR, f"at most {MAX_IMEIS} imeis per call")
        return imeis

    # History

    def _window(
        self, params: dict[str, str], begin_key: str, end_key: str, longest: timedelta
    ) -> tuple[datetime, datetime]:
        begin = _parse_time(params.get(begin_key), begin_key)
        end = _parse_time(params.get(end_key), end_key)
        if end < begin:
            raise FakeApiError(PARAM_ERROR, f"{end_key} is before {begin_key}")
        if end - begin > longest:
            raise FakeApiError(PARAM_ERROR, f"time range exceeds {longest.days} days")
        return begin, end

    def _known(self, imei: str) -> Trace:
        if imei == EXPIRED_IMEI and self.config.include_expired_device:
            raise FakeApiError(ILLEGAL_DEVICE, f"The device has expired{{{imei}}}")
        trace = self._traces.get(imei)
        if trace is None:
            raise FakeApiError(ILLEGAL_DEVICE, f"IMEI does not exist{{{imei}}}")
        return trace

    def _fixes(
        self, imei: str, begin: datetime, end: datetime
    ) -> list[tuple[datetime, TracePoint]]:
        # The platform keeps whole seconds: a fix at 12:00:00.6 is a 12:00:00 fix,
        # so it belongs to a window ending at 12:00:00.
        late_end = end.replace(microsecond=0) + timedelta(seconds=1)
        return [
            (gps, point)
            for gps, point in self.replay.fixes(imei, begin, late_end, self.wall())
            if is_valid_fix(point) and gps.replace(microsecond=0) <= end
        ]

    def _track_list(self, params: dict[str, str]) -> dict[str, Any]:
        imei = (params.get("imei") or "").strip()
        if not imei or "," in imei:
            raise FakeApiError(PARAM_ERROR, "imei must name exactly one device")
        begin, end = self._window(params, "begin_time", "end_time", MAX_TRACK_WINDOW)
        now = self.wall()
        if end > now:
            raise FakeApiError(PARAM_ERROR, "end_time must be before now")
        if begin < now - TRACK_RETENTION:
            raise FakeApiError(PARAM_ERROR, "only the last 3 months can be queried")
        self._known(imei)
        fixes = self._fixes(imei, begin, end)
        rows = [self._track_point(imei, gps, point) for gps, point in fixes]
        return {
            "code": 0,
            "message": "success",
            "result": rows,
            "data": {"mileage": round(_distance_km(fixes), 3)},
        }

    @staticmethod
    def _track_point(imei: str, gps: datetime, point: TracePoint) -> dict[str, Any]:
        stamp = format_platform_time(gps)
        key = f"{imei}{stamp}"
        acc = None if point.acc_on is None else ("ON" if point.acc_on else "OFF")
        return {
            "lat": round(point.lat, 6),
            "lng": round(point.lng, 6),
            "gpsTime": stamp,
            "direction": _mixed(
                point.direction if point.direction is not None else 0, key
            ),
            "gpsSpeed": _mixed(
                round(point.speed_kmh, 1) if point.speed_kmh is not None else -1,
                key + "s",
            ),
            "posType": 1,
            "satellite": 10,
            "ignition": acc,
            "accStatus": acc,
            "altitude": point.altitude_m,
        }

    def _track_mileage(self, params: dict[str, str]) -> dict[str, Any]:
        imeis = self._imei_list(params.get("imeis"))
        begin, end = self._window(params, "begin_time", "end_time", MAX_ALARM_WINDOW)
        scale = 1000.0 if self.config.mileage_unit == "m" else 1.0
        trips, totals = [], []
        for imei in imeis:
            if imei not in self._traces:
                continue
            total = 0.0
            # A trip report lists whole trips: one that began before the window
            # keeps its real start, so overlapping polls name it the same way.
            fixes = self._fixes(imei, begin - TRIP_CONTEXT, end)
            trips_of, _ = _split(fixes, self._min_stop)
            for run in trips_of:
                if run[-1][0] < begin:
                    continue
                km = _distance_km(run)
                total += km
                seconds = int((run[-1][0] - run[0][0]).total_seconds())
                speeds = [p.speed_kmh or 0 for _, p in run]
                trips.append(
                    {
                        "imei": imei,
                        "startTime": format_platform_time(run[0][0]),
                        "endTime": format_platform_time(run[-1][0]),
                        "startLat": round(run[0][1].lat, 6),
                        "startLng": round(run[0][1].lng, 6),
                        "endLat": round(run[-1][1].lat, 6),
                        "endLng": round(run[-1][1].lng, 6),
                        "runTimeSecond": seconds,
                        "distance": round(km * scale, 3),
                        "avgSpeed": round(km / seconds * 3600, 1) if seconds else 0,
                        "maxSpeed": round(max(speeds)),
                    }
                )
            totals.append({"imei": imei, "totalMileage": round(total * scale, 3)})
        return {"code": 0, "message": "success", "result": trips, "data": totals}

    @property
    def _min_stop(self) -> timedelta:
        return timedelta(seconds=self.config.parking_min_seconds)

    def alarms(self, imei: str, begin: datetime, end: datetime) -> list[dict]:
        """Return the alarm rows of one device with fix times in [begin, end]."""
        trace = self._traces[imei]
        rows = []
        previous: TracePoint | None = None
        # Start earlier so that whether a fix raises an alarm depends on the
        # fix before it, never on where the query window happens to begin.
        for gps, point in self._fixes(imei, begin - ALARM_CONTEXT, end):
            kind = None
            if previous is not None and point.acc_on != previous.acc_on:
                if point.acc_on is not None:
                    kind = (
                        ("ACC_ON", "ACC ON") if point.acc_on else ("ACC_OFF", "ACC OFF")
                    )
            limit = self.config.overspeed_kmh
            if (
                (point.speed_kmh or 0)
                > limit
                >= ((previous.speed_kmh or 0) if previous else 0)
            ):
                # The device's own overspeed alarm, the one the pusher sends:
                # both paths then report one fact (same type, same time).
                kind = (DEVICE_OVERSPEED, "Overspeed alert")
            previous = point
            if kind is None or gps.replace(microsecond=0) < begin:
                continue
            rows.append(
                {
                    "deviceName": trace.plate.strip() or imei,
                    "imei": imei,
                    "model": "JC400P" if trace.name.startswith("truck") else "VL802",
                    "account": self._owner(imei),
                    "alertTypeId": kind[0],
                    "alarmTypeName": kind[1],
                    "alertTime": format_platform_time(gps),
                    "positioningTime": format_platform_time(gps),
                    "lat": round(point.lat, 6),
                    "lng": round(point.lng, 6),
                    "speed": str(round(point.speed_kmh or 0)),
                    "geoid": None if len(rows) % 2 else "",
                }
            )
        return rows

    def _alarm_list(self, params: dict[str, str]) -> dict[str, Any]:
        imeis = self._imei_list(params.get("imeis") or params.get("imei"))
        if params.get("begin_time") or params.get("end_time"):
            begin, end = self._window(
                params, "begin_time", "end_time", MAX_ALARM_WINDOW
            )
        else:
            end = self.wall()
            begin = end - MAX_ALARM_WINDOW
        try:
            page_no = (
                1 if self.config.ignore_page_no else int(params.get("page_no") or 1)
            )
            page_size = int(params.get("page_size") or 50)
        except ValueError:
            raise FakeApiError(
                PARAM_ERROR, "page_no and page_size are numbers"
            ) from None
        if page_no < 1 or not 1 <= page_size <= 100:
            raise FakeApiError(PARAM_ERROR, "page_no >= 1, page_size 1 to 100")
        rows = [
            row
            for imei in imeis
            if imei in self._traces
            for row in self.alarms(imei, begin, end)
        ]
        rows.sort(key=lambda r: (r["alertTime"], r["imei"]))
        rows = rows[:MAX_ALARM_ROWS]
        first = (page_no - 1) * page_size
        return {
            "code": 0,
            "message": "success",
            "result": rows[first : first + page_size],
        }

    def parkings(
        self, imei: str, begin: datetime, end: datetime, acc_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the parking (acc off) and idling (on) rows of one device."""
        trace = self._traces.get(imei)
        if trace is None:
            return []
        rows = []
        # As for trips: a stop that began before the window keeps its real start.
        _, stops = _split(self._fixes(imei, begin - TRIP_CONTEXT, end), self._min_stop)
        for stop, go in stops:
            if go[0] < begin:
                continue
            # A standstill with the ignition on is idling, else parking.
            acc = "on" if stop[1].acc_on else "off"
            if acc_type not in (None, "", acc):
                continue
            seconds = int((go[0] - stop[0]).total_seconds())
            rows.append(
                {
                    "imei": imei,
                    "startTime": _iso_z(stop[0]),
                    "endTime": _iso_z(go[0]),
                    "durSecond": str(seconds),
                    "lng": round(stop[1].lng, 6),
                    "lat": round(stop[1].lat, 6),
                    "addr": "",
                    "deviceName": trace.plate.strip() or imei,
                    "mcType": "JC400P" if trace.name.startswith("truck") else "VL802",
                    "acc": acc,
                    "stopSecond": str(seconds),
                }
            )
        return rows

    def _report_parking(self, params: dict[str, str]) -> dict[str, Any]:
        imeis = self._imei_list(params.get("imeis"))
        begin, end = self._window(params, "start_time", "end_time", MAX_ALARM_WINDOW)
        try:
            start_row = int(params.get("start_row") or 0)
            page_size = int(params.get("page_size") or 100)
        except ValueError:
            raise FakeApiError(
                PARAM_ERROR, "start_row and page_size are numbers"
            ) from None
        if [start_row, page_size] in self.config.parking_refused_pagings:
            raise FakeApiError(PARAM_ERROR, "start_row or page_size is invalid")
        acc_type = params.get("acc_type")
        rows = [
            row for imei in imeis for row in self.parkings(imei, begin, end, acc_type)
        ]
        first = max(start_row - self.config.parking_row_base, 0)
        page = rows[first : first + page_size]
        total = sum(int(r["durSecond"]) for r in rows)
        return {
            "code": 0,
            "message": "success",
            "result": None,
            "data": {
                "totalTime": str(total),
                "dataTotalRows": str(len(rows)),
                "rows": page,
            },
        }

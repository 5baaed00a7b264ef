"""Push replayed fixes to a receiver the way the Tracksolid platform does.

Every round, the fixes a :class:`~fakeplatform.traces.Replay` delivered since the
previous round are POSTed form-encoded (``token`` + ``data_list``, a JSON array
string of at most 50 records) to ``<base>/pushgps``; devices also send
``/pushhb`` heartbeats, and optionally ``/pushevent`` (online/offline at the
ends of a pass), overspeed alarms (``/pushalarm`` in the IoT-Hub or flat shape,
or the ``jimi.push.device.alarm`` message to the base path), ``/pushtripreport``
at the end of each pass, and every ``extras_interval_s`` one ``/pushlbs``,
``/pushobd``, ``/pushfaultinfo``, ``/pushtem`` and ``/pushoil`` record per
device seen. Records mix numbers and numeric strings and leave unknown values
empty, as the real platform does.

Jimi publishes no field list for ``/pushobd``, ``/pushfaultinfo``, ``/pushtem``,
``/pushoil`` and ``/pushtripreport``. Their records here are plausible guesses,
not the platform's shapes: keyed by ``deviceImei``, stamped with ``gateTime``,
with value names borrowed from the documented Open API methods (obd.list,
obd.fault, track.mileage) where one exists. They exercise the path through the
pipeline, not the cleaning of real records.

Like the platform, the pusher does not retry by default: a batch the receiver
refuses or never answers is lost and counted. Retries and duplicate resends are
options for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from fakeplatform.traces import (
    Delivery,
    Replay,
    Trace,
    format_platform_time,
    is_valid_fix,
)
from fleetstream.errors import ConfigError
from fleetstream.geo import haversine_m
from fleetstream.runtime import sleep_or_stop
from fleetstream.settings import Settings

logger = logging.getLogger(__name__)

MAX_BATCH = 50
# A fix reaching the platform this much (trace seconds) after it was taken came
# from the device's buffer and is flagged as a re-upload.
REUPLOAD_AFTER_S = 30.0
OVERSPEED_ALARM = "6"
ALARM_SHAPES = ("iothub", "flat", "message")
# Paths with one record per device every extras_interval_s.
EXTRA_PATHS = ("pushlbs", "pushobd", "pushfaultinfo", "pushtem", "pushoil")
# Every data push path the fake can send, in the order a round posts them.
PUSH_PATHS = (
    "pushgps",
    "pushevent",
    "pushhb",
    "pushalarm",
    *EXTRA_PATHS,
    "pushtripreport",
)
FAULT_CODES = (
    ("P0300", "Random/multiple cylinder misfire detected"),
    ("P0420", "Catalyst system efficiency below threshold"),
    ("P0171", "System too lean, bank 1"),
    ("P0562", "System voltage low"),
)


@dataclass(frozen=True)
class PushOptions:
    """How the fake platform pushes."""

    interval_s: float = 5.0
    batch_size: int = MAX_BATCH
    # Attempts per batch; the real platform makes one.
    attempts: int = 1
    retry_pause_s: float = 1.0
    # Resend every n-th batch a second time (0: never).
    duplicate_every: int = 0
    # Wall seconds between two heartbeats of a device (0: none).
    heartbeat_interval_s: float = 60.0
    events: bool = False
    # Overspeed alarms above this speed (None: no alarms).
    overspeed_kmh: float | None = None
    # "rotate" takes the three shapes in turn, alarm after alarm.
    alarm_shape: Literal["iothub", "flat", "message", "rotate"] = "iothub"
    timeout_s: float = 30.0
    gps: bool = True
    # Paths of EXTRA_PATHS to send, and the wall seconds between two records
    # of one device on each.
    extras: tuple[str, ...] = ()
    extras_interval_s: float = 60.0
    trip_reports: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.extras) - set(EXTRA_PATHS)
        if unknown:
            raise ValueError(
                f"unknown extra push paths {sorted(unknown)}; known: {EXTRA_PATHS}"
            )


def _mixed(record: dict[str, Any], key: str, fields: Iterable[str]) -> None:
    """Turn some numeric fields into numeric strings, stably per record."""
    for field in fields:
        value = record.get(field)
        if (
            isinstance(value, int | float)
            and zlib.crc32(f"{key}:{field}".encode()) % 4 == 0
        ):
            record[field] = str(value)


def _acc(value: bool | None) -> int | str:
    return "" if value is None else int(value)


def gps_record(delivery: Delivery) -> dict[str, Any]:
    """Return the /pushgps record of one delivered fix."""
    point, imei = delivery.point, delivery.trace.imei
    key = f"{imei}:{delivery.pass_index}:{point.offset_s}"
    late = point.delivery_offset_s - point.offset_s > REUPLOAD_AFTER_S
    record: dict[str, Any] = {
        "deviceImei": imei,
        "gpsTime": format_platform_time(delivery.gps_time),
        "gateTime": format_platform_time(delivery.delivered_at),
        "lat": point.lat,
        "lng": point.lng,
        "gpsSpeed": 0 if point.speed_kmh is None else round(point.speed_kmh),
        "direction": 0 if point.direction is None else point.direction,
        # Recordings carry no satellite counts; a stable plausible one.
        "satelliteNum": 6 + zlib.crc32(key.encode()) % 9,
        "gpsMode": 1 if late else 0,
        "postType": 1,
        "acc": _acc(point.acc_on),
    }
    if point.altitude_m is not None:
        record["altitude"] = round(point.altitude_m, 1)
    if point.odometer_m is not None:
        record["distance"] = round(point.odometer_m)
    _mixed(record, key, ("lat", "lng", "gpsSpeed", "direction", "satelliteNum"))
    return record


def heartbeat_record(trace: Trace, at: datetime, latest: Delivery | None) -> dict:
    """Return the /pushhb record of a device at ``at``."""
    record = {
        "deviceImei": trace.imei,
        "gateTime": format_platform_time(at),
        "powerLevel": 6,
        "gsmSign": 4,
        "acc": _acc(latest.point.acc_on if latest else None),
        "oilEle": 0,
        "gpsPos": 1 if latest else 0,
        "remoteLock": 0,
        "powerStatus": 1,
        "fortify": 0,
    }
    _mixed(record, f"{trace.imei}:{record['gateTime']}", ("powerLevel", "gsmSign"))
    return record


def event_record(delivery: Delivery, kind: str) -> dict[str, Any]:
    """Return the /pushevent record of a device coming online or going quiet."""
    return {
        "deviceImei": delivery.trace.imei,
        "type": kind,
        "gateTime": format_platform_time(delivery.delivered_at),
        "timezone": "GMT+00:00",
    }


def alarm_record(delivery: Delivery, shape: str) -> dict[str, Any]:
    """Return an overspeed alarm record in the IoT-Hub, flat or message shape."""
    point, imei = delivery.point, delivery.trace.imei
    alarm_time = format_platform_time(delivery.gps_time)
    if shape == "iothub":
        return {
            "type": "DEVICE",
            "msgClass": 0,
            "imei": imei,
            "gateTime": format_platform_time(delivery.delivered_at),
            "msg": {
                "deviceImei": imei,
                "alertType": OVERSPEED_ALARM,
                "alarmTime": alarm_time,
                "lat": point.lat,
                "lng": point.lng,
                "gpsSpeed": round(point.speed_kmh or 0),
                "alertValue": "",
                "file": "",
            },
        }
    return {
        "imei": imei,
        "deviceName": delivery.trace.plate,
        "alarmType": OVERSPEED_ALARM,
        "alarmName": "Overspeed alert",
        "lat": point.lat,
        "lng": point.lng,
        "alarmTime": alarm_time,
    }


def _stable(key: str, modulo: int) -> int:
    return zlib.crc32(key.encode()) % modulo


def lbs_record(delivery: Delivery, at: datetime) -> dict[str, Any]:
    """Return a /pushlbs record: cells of a plausible network near the last fix."""
    point, imei = delivery.point, delivery.trace.imei
    lac = 10_000 + int((point.lat + 90) * 20) % 5_000
    cell = int((point.lng + 180) * 200) % 60_000
    key = f"{imei}:{format_platform_time(at)}"
    cells = ";".join(
        f"{lac},{cell + n},{-60 - _stable(f'{key}:{n}', 35)}" for n in range(3)
    )
    return {
        "deviceImei": imei,
        "gateTime": format_platform_time(at),
        "postType": "LBS",
        "lbsJson": json.dumps({"mcc": 639, "mnc": 2, "cellList": cells}),
    }


def obd_record(delivery: Delivery, at: datetime) -> dict[str, Any]:
    """Return a guessed /pushobd record with obd.list's value names."""
    point, imei = delivery.point, delivery.trace.imei
    speed = round(point.speed_kmh or 0)
    running = point.acc_on is not False and speed > 0
    record: dict[str, Any] = {
        "deviceImei": imei,
        "gateTime": format_platform_time(at),
        "dataReportTime": format_platform_time(delivery.gps_time),
        "currentRPM": 800 + speed * 25 if running else 0,
        "currentSpeed": speed,
        "coolantTemperature": 88 if running else 35,
        "remainingFuelPercentage": str(40 + _stable(imei, 50)),
        "vehicleBatterVoltage": "13.9" if running else "12.5",
        "vin": "",
    }
    _mixed(record, f"{imei}:{record['gateTime']}", ("currentRPM", "currentSpeed"))
    return record


def fault_record(delivery: Delivery, at: datetime) -> dict[str, Any]:
    """Return a guessed /pushfaultinfo record with obd.fault's value names."""
    imei = delivery.trace.imei
    code, detail = FAULT_CODES[_stable(f"{imei}:{at.hour}", len(FAULT_CODES))]
    return {
        "deviceImei": imei,
        "gateTime": format_platform_time(at),
        "faultCode": code,
        "faultDetail": detail,
    }


def temperature_record(delivery: Delivery, at: datetime) -> dict[str, Any]:
    """Return a guessed /pushtem record: one probe in a cooled load space."""
    imei = delivery.trace.imei
    stamp = format_platform_time(at)
    return {
        "deviceImei": imei,
        "gateTime": stamp,
        "sensor": 1,
        "temperature": str(round(3.5 + _stable(stamp + imei, 30) / 10, 1)),
        "humidity": 55 + _stable(imei + stamp, 20),
    }


def fuel_record(delivery: Delivery, at: datetime) -> dict[str, Any]:
    """Return a guessed /pushoil record; ``unit`` arrives as a number."""
    imei = delivery.trace.imei
    return {
        "deviceImei": imei,
        "gateTime": format_platform_time(at),
        "oilValue": str(round(120 - _stable(imei, 60) + at.minute / 10, 1)),
        "unit": 1,
    }


EXTRA_RECORDS = {
    "pushlbs": lbs_record,
    "pushobd": obd_record,
    "pushfaultinfo": fault_record,
    "pushtem": temperature_record,
    "pushoil": fuel_record,
}


def trip_report_record(replay: Replay, delivery: Delivery) -> dict[str, Any]:
    """Return a guessed /pushtripreport record of the pass ``delivery`` ends.

    Value names follow track.mileage; ``distance`` is in kilometres, like the
    trips real accounts report there.
    """
    trace, n = delivery.trace, delivery.pass_index
    fixes = sorted(
        (p for p in trace.points if is_valid_fix(p)), key=lambda p: p.offset_s
    )
    first, last = fixes[0], fixes[-1]
    metres = sum(
        haversine_m(a.lat, a.lng, b.lat, b.lng)
        for a, b in zip(fixes, fixes[1:], strict=False)
    )
    start = replay.instant(trace, n, first.offset_s)
    end = replay.instant(trace, n, last.offset_s)
    seconds = int((end - start).total_seconds())
    return {
        "deviceImei": trace.imei,
        "gateTime": format_platform_time(delivery.delivered_at),
        "startTime": format_platform_time(start),
        "endTime": format_platform_time(end),
        "startLat": round(first.lat, 6),
        "startLng": round(first.lng, 6),
        "endLat": round(last.lat, 6),
        "endLng": round(last.lng, 6),
        "distance": round(metres / 1000, 3),
        "runTimeSecond": seconds,
        "maxSpeed": round(max(p.speed_kmh or 0 for p in fixes)),
        "avgSpeed": round(metres / 1000 / seconds * 3600, 1) if seconds else 0,
    }


def _acknowledged(response: httpx.Response) -> bool:
    """Return whether a 200 reply carries the platform's success code 0."""
    try:
        reply = response.json()
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("code") == 0


class Pusher:
    """Push what a replay delivers to one receiver, round after round."""

    def __init__(
        self,
        replay: Replay,
        base_url: str,
        token: str,
        options: PushOptions | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.replay = replay
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.options = options or PushOptions()
        self._client = client
        self._batches_sent = 0
        self._last_heartbeat: dict[str, datetime] = {}
        self._latest: dict[str, Delivery] = {}
        self._speeding: set[str] = set()
        self._last_extras: dict[str, datetime] = {}
        self._alarms_made = 0
        # (path, outcome) -> records; outcomes: accepted, refused, failed.
        self.records: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()

    async def push_window(self, since: datetime, until: datetime) -> None:
        """Push everything delivered in (since, until] and what is due at until."""
        if self._client is None:
            async with httpx.AsyncClient(timeout=self.options.timeout_s) as client:
                self._client = client
                try:
                    await self._push_window(since, until)
                finally:
                    self._client = None
        else:
            await self._push_window(since, until)

    async def _push_window(self, since: datetime, until: datetime) -> None:
        options = self.options
        by_path: dict[str, list[Any]] = {path: [] for path in PUSH_PATHS}
        messages = []
        for delivery in self.replay.deliveries(since, until):
            if options.gps:
                by_path["pushgps"].append(gps_record(delivery))
            self._latest[delivery.trace.imei] = delivery
            if options.events and delivery.first_of_pass:
                by_path["pushevent"].append(event_record(delivery, "LOGIN"))
            if options.events and delivery.last_of_pass:
                by_path["pushevent"].append(event_record(delivery, "LOGOUT"))
            if options.trip_reports and delivery.last_of_pass:
                by_path["pushtripreport"].append(
                    trip_report_record(self.replay, delivery)
                )
            alarm = self._overspeed(delivery)
            if alarm is not None:
                shape, record = alarm
                if shape == "message":
                    messages.append(record)
                else:
                    by_path["pushalarm"].append(record)
        by_path["pushhb"] = self._heartbeats(until)
        by_path.update(self._extras(until))
        for record in messages:
            await self._post_message("jimi.push.device.alarm", record)
        for path, records in by_path.items():
            for start in range(0, len(records), options.batch_size):
                await self._post_batch(
                    path, records[start : start + options.batch_size]
                )

    def _extras(self, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """Return the extra records due at ``now`` of every device seen so far."""
        interval = timedelta(seconds=self.options.extras_interval_s)
        due: dict[str, list[dict[str, Any]]] = {p: [] for p in self.options.extras}
        if not due:
            return due
        for imei, latest in self._latest.items():
            last = self._last_extras.get(imei)
            if last is not None and now - last < interval:
                continue
            self._last_extras[imei] = now
            for path in due:
                due[path].append(EXTRA_RECORDS[path](latest, now))
        return due

    def _overspeed(self, delivery: Delivery) -> tuple[str, dict[str, Any]] | None:
        limit = self.options.overspeed_kmh
        if limit is None:
            return None
        imei, speed = delivery.trace.imei, delivery.point.speed_kmh or 0.0
        if speed <= limit:
            self._speeding.discard(imei)
            return None
        if imei in self._speeding:
            return None
        # One alarm when a device crosses the limit, not one per fix above it.
        self._speeding.add(imei)
        shape = self.options.alarm_shape
        if shape == "rotate":
            shape = ALARM_SHAPES[self._alarms_made % len(ALARM_SHAPES)]
        self._alarms_made += 1
        return shape, alarm_record(delivery, shape)

    def _heartbeats(self, now: datetime) -> list[dict[str, Any]]:
        interval = self.options.heartbeat_interval_s
        if interval <= 0:
            return []
        due = []
        for trace in self.replay.traces:
            last = self._last_heartbeat.get(trace.imei)
            if last is None or now - last >= timedelta(seconds=interval):
                self._last_heartbeat[trace.imei] = now
                due.append(heartbeat_record(trace, now, self._latest.get(trace.imei)))
        return due

    async def _post_batch(self, path: str, records: list[dict[str, Any]]) -> None:
        body = {"token": self.token, "data_list": json.dumps(records)}
        self._batches_sent += 1
        copies = 1
        if (
            self.options.duplicate_every
            and self._batches_sent % self.options.duplicate_every == 0
        ):
            copies = 2
        for _ in range(copies):
            await self._post(path, body, len(records))

    async def _post_message(self, msg_type: str, data: dict[str, Any]) -> None:
        # Open API messages carry no token field: the secret rides in the query.
        body = {"msgType": msg_type, "data": json.dumps(data)}
        await self._post(f"?token={self.token}", body, 1, label="message")

    async def _post(
        self, path: str, body: dict[str, str], count: int, label: str | None = None
    ) -> None:
        label = label or path
        client = self._client
        outcome = "failed"
        for attempt in range(self.options.attempts):
            if attempt:
                await asyncio.sleep(self.options.retry_pause_s)
            try:
                response = await client.post(f"{self.base_url}/{path}", data=body)
            except httpx.HTTPError as exc:
                logger.debug("push to /%s failed: %s", label, type(exc).__name__)
                continue
            if response.status_code == 200 and _acknowledged(response):
                outcome = "accepted"
                break
            outcome = "refused"
            logger.debug("push to /%s refused with %s", label, response.status_code)
            if response.status_code < 500:
                break
        self.requests[(label, outcome)] += 1
        self.records[(label, outcome)] += count

    def summary(self) -> str:
        """Return the record counts so far, e.g. ``pushgps accepted=120``."""
        return ", ".join(
            f"{path} {outcome}={n}"
            for (path, outcome), n in sorted(self.records.items())
        )

    async def run(self, stop: asyncio.Event, since: datetime | None = None) -> None:
        """Push every ``interval_s`` until ``stop`` is set; start after ``since``."""
        owns_client = self._client is None
        if owns_client:
            self._client = httpx.AsyncClient(timeout=self.options.timeout_s)
        last = since or datetime.now(UTC)
        rounds = 0
        try:
            while not await sleep_or_stop(stop, self.options.interval_s):
                now = datetime.now(UTC)
                await self.push_window(last, now)
                last = now
                rounds += 1
                if rounds % max(1, round(60 / self.options.interval_s)) == 0:
                    logger.info("pushed so far: %s", self.summary() or "nothing")
        finally:
            if owns_client:
                await self._client.aclose()
                self._client = None
            logger.info("pusher stopped after %d rounds: %s", rounds, self.summary())


def options_from(settings: Settings) -> PushOptions:
    """Return the push options ``settings`` select (``fake_push_*``)."""
    paths = [p.strip().strip("/") for p in settings.fake_push_paths.split(",")]
    paths = [p for p in paths if p]
    unknown = set(paths) - set(PUSH_PATHS)
    if unknown:
        raise ConfigError(
            f"FLEETSTREAM_FAKE_PUSH_PATHS names unknown paths {sorted(unknown)}",
            hint=f"choose among {', '.join(PUSH_PATHS)}",
        )
    shape = settings.fake_push_alarm_shape
    if shape not in (*ALARM_SHAPES, "rotate"):
        raise ConfigError(
            f"FLEETSTREAM_FAKE_PUSH_ALARM_SHAPE is {shape!r}",
            hint="use iothub, flat, message or rotate",
        )
    return PushOptions(
        interval_s=settings.fake_push_interval_seconds,
        gps="pushgps" in paths,
        heartbeat_interval_s=(
            settings.fake_push_heartbeat_interval_seconds if "pushhb" in paths else 0
        ),
        events="pushevent" in paths,
        overspeed_kmh=(
            settings.fake_push_overspeed_kmh if "pushalarm" in paths else None
        ),
        alarm_shape=shape,
        extras=tuple(p for p in EXTRA_PATHS if p in paths),
        extras_interval_s=settings.fake_push_extras_interval_seconds,
        trip_reports="pushtripreport" in paths,
    )


def pusher_from_settings(replay: Replay, settings: Settings) -> Pusher | None:
    """Return the pusher ``settings`` ask for, or None when no push URL is set.

    The fake platform pushes with the token the receiver expects, as Jimi would
    after the token was agreed.
    """
    if not settings.fake_push_url:
        return None
    token = settings.webhook_push_token.get_secret_value()
    return Pusher(replay, settings.fake_push_url, token, options_from(settings))

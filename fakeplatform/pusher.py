"""Push replayed fixes to a receiver the way the Tracksolid platform does.

Every round, the fixes a :class:`~fakeplatform.traces.Replay` delivered since the
previous round are POSTed form-encoded (``token`` + ``data_list``, a JSON array
string of at most 50 records) to ``<base>/pushgps``; devices also send
``/pushhb`` heartbeats, and optionally ``/pushevent`` (online/offline at the
ends of a pass) and overspeed alarms. Records mix numbers and numeric strings
and leave unknown values empty, as the real platform does.

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

from fakeplatform.traces import Delivery, Replay, Trace, format_platform_time
from fleetstream.runtime import sleep_or_stop
from fleetstream.settings import Settings

logger = logging.getLogger(__name__)

MAX_BATCH = 50
# A fix reaching the platform this much (trace seconds) after it was taken came
# from the device's buffer and is flagged as a re-upload.
REUPLOAD_AFTER_S = 30.0
OVERSPEED_ALARM = "6"


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
    alarm_shape: Literal["iothub", "flat", "message"] = "iothub"
    timeout_s: float = 30.0


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
        # (path, outcome) -> records; outcomes: accepted, refused, failed.
        self.records: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()

    async def push_window(self, since: datetime, until: datetime) -> None:
        """Push everything delivered in (since, until] and heartbeats due at until."""
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
        deliveries = self.replay.deliveries(since, until)
        by_path: dict[str, list[dict[str, Any]]] = {"pushgps": []}
        events, alarms = [], []
        for delivery in deliveries:
            by_path["pushgps"].append(gps_record(delivery))
            self._latest[delivery.trace.imei] = delivery
            if self.options.events and delivery.first_of_pass:
                events.append(event_record(delivery, "LOGIN"))
            if self.options.events and delivery.last_of_pass:
                events.append(event_record(delivery, "LOGOUT"))
            alarm = self._overspeed(delivery)
            if alarm is not None:
                alarms.append(alarm)
        by_path["pushevent"] = events
        by_path["pushhb"] = self._heartbeats(until)
        if self.options.alarm_shape == "message":
            for alarm in alarms:
                await self._post_message("jimi.push.device.alarm", alarm)
        else:
            by_path["pushalarm"] = alarms
        for path, records in by_path.items():
            for start in range(0, len(records), self.options.batch_size):
                await self._post_batch(
                    path, records[start : start + self.options.batch_size]
                )

    def _overspeed(self, delivery: Delivery) -> dict[str, Any] | None:
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
        return alarm_record(delivery, self.options.alarm_shape)

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


def pusher_from_settings(replay: Replay, settings: Settings) -> Pusher | None:
    """Return the pusher ``settings`` ask for, or None when no push URL is set.

    The fake platform pushes with the token the receiver expects, as Jimi would
    after the token was agreed.
    """
    if not settings.fake_push_url:
        return None
    options = PushOptions(interval_s=settings.fake_push_interval_seconds)
    token = settings.webhook_push_token.get_secret_value()
    return Pusher(replay, settings.fake_push_url, token, options)

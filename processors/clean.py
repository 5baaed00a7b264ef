"""Pure cleaning functions: one raw platform record in, one typed record out.

Each ``clean_<kind>`` reads one record of a raw topic (its ``RawEvent`` envelope
as a ``Raw`` and the decoded JSON payload) and returns a dict matching the
schema of the clean topic, or raises ``RejectedRecord`` with the reason the
record cannot be used. They keep no state and do no I/O, so every rule can be
tested with a literal input and an exact expected output.

Times come out as UTC epoch milliseconds. Speeds stay in km/h as the platform
reports them. Ignition is True, False or None (the record did not say).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple
from zoneinfo import ZoneInfo

import orjson

from fleetstream.errors import RejectedRecord
from fleetstream.settings import Settings
from processors import fields as f
from processors.plates import normalize_plate
from processors.trips import PLATFORM, trip_id

# No Tracksolid device reports before this; older times are unset device clocks.
EARLIEST_PLAUSIBLE_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
IMEI_LENGTH = 15
# An IMEI is exactly 15 ASCII digits. Every Tracksolid device reports one; 14
# digits (no check digit) and 16/17 (IMEISV) never appear on this platform, and
# str.isdigit alone would let Arabic-Indic or full-width digits through (hence
# isascii too). The Luhn check digit is not verified: some trackers ship with
# IMEIs that fail it, and rejecting them would drop a real vehicle's data.
METRES_PER = {"km": 1000.0, "m": 1.0}


@dataclass(frozen=True)
class CleanContext:
    """Settings the cleaning rules depend on."""

    platform_zone: ZoneInfo
    future_tolerance_ms: int
    trip_distance_to_m: float = 1000.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanContext:
        """Return the context the settings describe."""
        return cls(
            platform_zone=ZoneInfo(settings.platform_timezone),
            future_tolerance_ms=int(settings.future_fix_tolerance_seconds * 1000),
            trip_distance_to_m=METRES_PER[settings.platform_trip_distance_unit],
        )


def _not_json(constant: str) -> None:
    """Refuse NaN and Infinity, which Python's json module would accept."""
    raise ValueError(f"{constant} is not JSON")


class Raw(NamedTuple):
    """The envelope of one raw record with its payload decoded from JSON."""

    source: str
    origin: str
    received_at: int
    imei: str | None
    payload: dict

    @classmethod
    def from_event(cls, event: dict) -> Raw:
        """Return the envelope of a decoded ``RawEvent``; reject bad payloads."""
        received = event["received_at"]
        received_ms = received if isinstance(received, int) else f.epoch_ms_of(received)
        return cls.from_text(
            event["source"],
            event["origin"],
            received_ms,
            event.get("imei"),
            event["payload"],
        )

    @classmethod
    def from_text(
        cls, source: str, origin: str, received_ms: int, imei: str | None, text: str
    ) -> Raw:
        """Return the envelope with its JSON payload text read; reject bad ones."""
        try:
            # orjson parses these small documents about three times faster.
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            # orjson refuses escaped lone surrogates (a name cut inside an
            # emoji), which the producers write and JSON allows.
            try:
                payload = json.loads(text, parse_constant=_not_json)
            except ValueError:
                raise RejectedRecord("payload is not JSON") from None
        if not isinstance(payload, dict):
            raise RejectedRecord(
                f"payload is a JSON {type(payload).__name__}, expected an object"
            )
        return cls(source, origin, received_ms, imei, payload)


def device_imei(raw: Raw, record: dict | None = None) -> str:
    """Return the IMEI of the record, falling back to the envelope's."""
    value = f.first(record if record is not None else raw.payload, "imei", "deviceImei")
    imei = f.text(value) if value is not None else f.text(raw.imei)
    if imei is None:
        raise RejectedRecord("no IMEI in the record or its envelope")
    if len(imei) != IMEI_LENGTH or not (imei.isascii() and imei.isdigit()):
        raise RejectedRecord(f"IMEI is not {IMEI_LENGTH} ASCII digits: {imei!r:.20}")
    return imei


def event_time(
    value: object, field: str, raw: Raw, ctx: CleanContext, *, required: bool = True
) -> int | None:
    """Return a record time in epoch ms, rejecting missing, future or unset ones.

    "Future" is judged against when the producer received the record, not the
    clock of this process, so a replay judges every record as it was judged live.
    """
    ms = f.epoch_ms(value, field, ctx.platform_zone)
    if ms is None:
        if required:
            raise RejectedRecord(f"{field} is missing")
        return None
    if ms < EARLIEST_PLAUSIBLE_MS:
        raise RejectedRecord(f"{field} {f.iso(ms)} is before 2000 (unset clock)")
    if ms > raw.received_at + ctx.future_tolerance_ms:
        raise RejectedRecord(
            f"{field} {f.iso(ms)} is more than {ctx.future_tolerance_ms // 1000} s "
            f"after the record was received ({f.iso(raw.received_at)})"
        )
    return ms


def coordinates(
    record: dict, lat_field: str = "lat", lng_field: str = "lng"
) -> tuple[float, float]:
    """Return a valid (lat, lng) pair; reject missing, (0,0) and out-of-range ones."""
    lat = f.number(record.get(lat_field), lat_field)
    lng = f.number(record.get(lng_field), lng_field)
    if lat is None or lng is None:
        raise RejectedRecord("coordinates are missing")
    if lat == 0 and lng == 0:
        raise RejectedRecord("coordinates are the (0,0) no-fix sentinel")
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise RejectedRecord(f"coordinates out of range: ({lat}, {lng})")
    return lat, lng


def optional_coordinates(
    record: dict, lat_field: str = "lat", lng_field: str = "lng"
) -> tuple[float | None, float | None]:
    """Return (lat, lng) when the record carries a usable fix, else (None, None)."""
    try:
        return coordinates(record, lat_field, lng_field)
    except RejectedRecord:
        return None, None


def _envelope(raw: Raw) -> dict:
    return {"source": raw.source, "origin": raw.origin, "received_at": raw.received_at}


# Positions ------------------------------------------------------------------


def clean_position(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Position`` from location.list/get, track.list or pushgps."""
    p = raw.payload
    lat, lng = coordinates(p)
    odometer_m = None
    if f.present(p.get("distance")) and raw.origin == "pushgps":
        odometer_m = f.number(p["distance"], "distance")
    elif f.present(p.get("currentMileage")):
        odometer_m = f.number(p["currentMileage"], "currentMileage") * 1000
    gps_mode = f.integer(p.get("gpsMode"), "gpsMode")
    return {
        "imei": device_imei(raw),
        "gps_time": event_time(p.get("gpsTime"), "gpsTime", raw, ctx),
        "lat": lat,
        "lng": lng,
        "speed_kmh": f.speed_kmh(f.first(p, "speed", "gpsSpeed"), "speed"),
        "direction_deg": f.direction_deg(p.get("direction"), "direction"),
        "acc_on": f.acc(f.first(p, "acc", "accStatus", "ignition")),
        "pos_type": f.pos_type(f.first(p, "posType", "postType", "positionType")),
        "satellites": f.integer(
            f.first(p, "satelliteNum", "satellite", "gpsNum"), "satellites"
        ),
        "altitude_m": f.number(p.get("altitude"), "altitude"),
        "reupload": None if gps_mode is None else gps_mode == 1,
        "odometer_m": odometer_m,
        "source": raw.source,
        "origin": raw.origin,
        "received_at": raw.received_at,
    }


# Heartbeats -------------------------------------------------------------------


def clean_heartbeat(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Heartbeat`` from a /pushhb record."""
    p = raw.payload
    return {
        "imei": device_imei(raw),
        "heartbeat_time": event_time(
            f.first(p, "gateTime", "hbTime"), "gateTime", raw, ctx
        ),
        "acc_on": f.acc(f.first(p, "acc", "accStatus")),
        "power_level": f.integer(p.get("powerLevel"), "powerLevel"),
        "gsm_signal": f.integer(p.get("gsmSign"), "gsmSign"),
        "gps_positioned": f.flag(p.get("gpsPos"), "gpsPos"),
        "fuel_cut": f.flag(p.get("oilEle"), "oilEle"),
        "remote_lock": f.flag(p.get("remoteLock"), "remoteLock"),
        "charging": f.flag(p.get("powerStatus"), "powerStatus"),
        "armed": f.flag(p.get("fortify"), "fortify"),
        "battery_pct": None,
        "voltage_v": None,
        **_envelope(raw),
    }


def heartbeat_from_location(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Heartbeat`` from a location.list record whose fix is not new.

    The platform repeats the last fix with a newer ``hbTime`` while a device is
    parked or indoors: that says the device is alive, not that it moved.
    """
    p = raw.payload
    return {
        "imei": device_imei(raw),
        "heartbeat_time": event_time(p.get("hbTime"), "hbTime", raw, ctx),
        "acc_on": f.acc(p.get("accStatus")),
        "power_level": None,
        "gsm_signal": f.integer(p.get("gpsSignal"), "gpsSignal"),
        "gps_positioned": None,
        "fuel_cut": None,
        "remote_lock": None,
        "charging": None,
        "armed": None,
        "battery_pct": f.number(p.get("electQuantity"), "electQuantity"),
        "voltage_v": f.number(p.get("powerValue"), "powerValue"),
        **_envelope(raw),
    }


# Devices ------------------------------------------------------------------------


def clean_device(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Device`` from a user.device.list row."""
    p = raw.payload
    plate = f.text(p.get("vehicleNumber"))
    enabled = f.first(p, "enabledFlag", "status")
    return {
        "imei": device_imei(raw),
        "device_name": f.text(p.get("deviceName")),
        "vehicle_number": plate,
        "vehicle_number_norm": normalize_plate(plate) if plate else None,
        "vehicle_name": f.text(p.get("vehicleName")),
        "vehicle_model": f.text(f.first(p, "vehicleModels", "vehicleBrand")),
        "vehicle_icon": f.text(p.get("vehicleIcon")),
        "device_model": f.text(p.get("mcType")),
        "sim": f.text(p.get("sim")),
        "vin": f.text(f.first(p, "carFrame", "vin")),
        "driver_name": f.text(p.get("driverName")),
        "driver_phone": f.text(p.get("driverPhone")),
        "device_group": f.text(p.get("deviceGroup")),
        "enabled": f.flag(enabled, "enabledFlag"),
        "expires_at": _registry_time(p.get("expiration"), "expiration", ctx),
        "activated_at": _registry_time(p.get("activationTime"), "activationTime", ctx),
        "account": f.text(p.get("account")),
        "source": raw.source,
        "received_at": raw.received_at,
    }


def _registry_time(value: object, field: str, ctx: CleanContext) -> int | None:
    # Expiry dates lie years ahead by design, so no future check here.
    return f.epoch_ms(value, field, ctx.platform_zone)


# Alarms -----------------------------------------------------------------------


def clean_alarm(raw: Raw, ctx: CleanContext) -> dict:
    """Return an ``Alarm`` from alarm.list, jimi.push.device.alarm or /pushalarm.

    /pushalarm comes in two shapes: the IoT-Hub one nests the alarm in ``msg``
    under a ``type`` of DEVICE (ICCID and VIN records are not alarms), the flat
    one carries the alarm fields at the top level like the Open API push.
    """
    p = raw.payload
    if "msg" in p:
        return _iot_hub_alarm(raw, ctx)
    lat, lng = optional_coordinates(p)
    return {
        "imei": device_imei(raw),
        "alarm_type": _alarm_type(f.first(p, "alertTypeId", "alarmType", "alertType")),
        "alarm_time": event_time(
            f.first(p, "alertTime", "alarmTime"), "alarmTime", raw, ctx
        ),
        "alarm_name": f.text(f.first(p, "alarmTypeName", "alarmName", "alertTypeName")),
        "lat": lat,
        "lng": lng,
        "speed_kmh": f.speed_kmh(f.first(p, "speed", "gpsSpeed"), "speed"),
        "position_time": event_time(
            p.get("positioningTime"), "positioningTime", raw, ctx, required=False
        ),
        "fence_id": f.text(p.get("geoid")),
        "alert_value": f.text(p.get("alertValue")),
        "device_model": f.text(p.get("model")),
        **_envelope(raw),
    }


def _iot_hub_alarm(raw: Raw, ctx: CleanContext) -> dict:
    p = raw.payload
    kind = f.text(p.get("type"))
    if kind is not None and kind.upper() != "DEVICE":
        raise RejectedRecord(f"pushalarm record of type {kind!r:.20} is not an alarm")
    msg = p["msg"]
    if isinstance(msg, str):
        msg = _json_object(msg, "msg")
    if not isinstance(msg, dict):
        raise RejectedRecord("pushalarm msg is not an object")
    lat, lng = optional_coordinates(msg)
    return {
        "imei": device_imei(raw, {"imei": f.first(p, "imei") or msg.get("deviceImei")}),
        "alarm_type": _alarm_type(f.first(msg, "alertType", "alarmType")),
        "alarm_time": event_time(
            f.first(msg, "alarmTime") or p.get("gateTime"), "alarmTime", raw, ctx
        ),
        "alarm_name": f.text(f.first(msg, "alarmName", "alertName")),
        "lat": lat,
        "lng": lng,
        "speed_kmh": f.speed_kmh(f.first(msg, "gpsSpeed", "speed"), "gpsSpeed"),
        "position_time": None,
        "fence_id": None,
        "alert_value": f.text(msg.get("alertValue")),
        "device_model": None,
        **_envelope(raw),
    }


def _alarm_type(value: object) -> str:
    alarm_type = f.text(value)
    if alarm_type is None:
        raise RejectedRecord("alarm type is missing")
    return alarm_type


def _json_object(value: object, field: str) -> dict:
    """Return a JSON object sent either as an object or as JSON text."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str | bytes):
        raise RejectedRecord(f"{field} is not JSON")
    try:
        # orjson, like the payload reader. It refuses NaN; an integer past 64
        # bits it reads as a float, losing the digits a double cannot hold.
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise RejectedRecord(f"{field} is not JSON") from None
    if not isinstance(parsed, dict):
        raise RejectedRecord(f"{field} is not a JSON object")
    return parsed


def _detail(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


# Device events, LBS -------------------------------------------------------------


def clean_event(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``DeviceEvent`` from a /pushevent record (LOGIN, LOGOUT)."""
    p = raw.payload
    event_type = f.text(f.first(p, "type", "eventType"))
    if event_type is None:
        raise RejectedRecord("event type is missing")
    return {
        "imei": device_imei(raw),
        "event_type": event_type.upper(),
        "event_time": event_time(p.get("gateTime"), "gateTime", raw, ctx),
        "device_timezone": f.text(p.get("timezone")),
        "detail": _detail(p),
        **_envelope(raw),
    }


def clean_lbs(raw: Raw, ctx: CleanContext) -> dict:
    """Return an ``LbsReading`` from a /pushlbs record.

    ``lbsJson`` holds ``mcc``, ``mnc`` and ``cellList`` as
    ``"LAC,CI,RSSI;LAC,CI,RSSI"``, serving cell first.
    """
    p = raw.payload
    lbs = (
        _json_object(p.get("lbsJson"), "lbsJson") if f.present(p.get("lbsJson")) else {}
    )
    cells = _cells(lbs.get("cellList"))
    serving = cells[0] if cells else {"lac": None, "cell_id": None, "signal": None}
    return {
        "imei": device_imei(raw),
        "reading_time": event_time(p.get("gateTime"), "gateTime", raw, ctx),
        "pos_type": f.pos_type(p.get("postType")),
        "mcc": f.integer(lbs.get("mcc"), "mcc"),
        "mnc": f.integer(lbs.get("mnc"), "mnc"),
        **serving,
        "cells": cells,
        "detail": _detail(p),
        **_envelope(raw),
    }


def _cells(value: object) -> list[dict]:
    if not f.present(value):
        return []
    cells = []
    for entry in str(value).split(";"):
        if not entry.strip():
            continue
        parts = entry.split(",")
        if len(parts) not in (2, 3):
            raise RejectedRecord(f"cellList entry is not LAC,CI,RSSI: {entry!r:.40}")
        lac = f.integer(parts[0], "cellList LAC")
        cell_id = f.integer(parts[1], "cellList CI", f.INT64)
        if lac is None or cell_id is None:
            raise RejectedRecord(f"cellList entry lacks LAC or CI: {entry!r:.40}")
        signal = f.integer(parts[2], "cellList RSSI") if len(parts) == 3 else None
        cells.append({"lac": lac, "cell_id": cell_id, "signal": signal})
    return cells


# OBD, faults, sensors -----------------------------------------------------------

OBD_FIELDS = {
    "currentRPM": "rpm",
    "currentSpeed": "speed_kmh",
    "coolantTemperature": "coolant_c",
    "remainingFuelPercentage": "fuel_level_pct",
    "vehicleBatterVoltage": "battery_v",
}
OBD_NOT_EXTRA = frozenset(
    {*OBD_FIELDS, "imei", "deviceImei", "dataReportTime", "gateTime", "vin"}
)


def clean_obd(raw: Raw, ctx: CleanContext) -> dict:
    """Return an ``ObdReading`` from obd.list or /pushobd.

    Readings whose unit the platform does not document (odometer, remaining
    fuel, accumulated mileage) are kept unconverted in ``extra``.
    """
    p = raw.payload
    values = {name: f.number(p.get(key), key) for key, name in OBD_FIELDS.items()}
    rpm = values.pop("rpm")
    extra = {k: v for k, v in p.items() if k not in OBD_NOT_EXTRA and f.present(v)}
    return {
        "imei": device_imei(raw),
        "reading_time": event_time(
            f.first(p, "dataReportTime", "gateTime"), "dataReportTime", raw, ctx
        ),
        "rpm": None if rpm is None else f.bounded(round(rpm), "currentRPM", f.INT32),
        **values,
        "vin": f.text(p.get("vin")),
        "extra": _detail(extra) if extra else None,
        **_envelope(raw),
    }


def clean_fault(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``FaultCode`` from obd.fault or /pushfaultinfo."""
    p = raw.payload
    code = f.text(f.first(p, "faultCode", "code"))
    if code is None:
        raise RejectedRecord("faultCode is missing")
    return {
        "imei": device_imei(raw),
        "fault_code": code,
        "reported_at": event_time(
            f.first(p, "eventTime", "gateTime"), "eventTime", raw, ctx
        ),
        "description": f.text(f.first(p, "faultDetail", "faultDesc")),
        "detail": _detail(p),
        **_envelope(raw),
    }


def clean_temperature(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``TemperatureReading`` from a /pushtem record."""
    p = raw.payload
    return {
        "imei": device_imei(raw),
        "sensor": f.integer(p.get("sensor"), "sensor") or 0,
        "reading_time": _reading_time(p, raw, ctx),
        "temperature_c": f.number(p.get("temperature"), "temperature"),
        "humidity_pct": f.number(p.get("humidity"), "humidity"),
        "detail": _detail(p),
        **_envelope(raw),
    }


def clean_fuel(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``FuelReading`` from a /pushoil record, its values kept in detail."""
    p = raw.payload
    return {
        "imei": device_imei(raw),
        "reading_time": _reading_time(p, raw, ctx),
        "fuel_level_pct": None,
        "fuel_litres": None,
        "detail": _detail(p),
        **_envelope(raw),
    }


def _reading_time(p: dict, raw: Raw, ctx: CleanContext) -> int:
    return event_time(f.first(p, "gpsTime", "gateTime"), "gateTime", raw, ctx)


# Parking --------------------------------------------------------------------------


def clean_parking(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``ParkingEvent`` from a report.parking row (ISO-Z times)."""
    p = raw.payload
    acc_on = f.acc(p.get("acc"))
    if acc_on is None:
        raise RejectedRecord("acc is neither on nor off: parking or idling unknown")
    lat, lng = optional_coordinates(p)
    return {
        "imei": device_imei(raw),
        "kind": "idling" if acc_on else "parking",
        "start_time": event_time(p.get("startTime"), "startTime", raw, ctx),
        "end_time": event_time(p.get("endTime"), "endTime", raw, ctx, required=False),
        "duration_s": f.integer(p.get("durSecond"), "durSecond", f.INT64),
        "stop_s": f.integer(p.get("stopSecond"), "stopSecond", f.INT64),
        "lat": lat,
        "lng": lng,
        "address": f.text(p.get("addr")),
        **_envelope(raw),
    }


# Platform trips -------------------------------------------------------------------


def clean_trip(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Trip`` (source platform) from a track.mileage or trip report row.

    The platform's ``distance`` is converted with the configured unit; its
    average speed is kept as reported.
    """
    p = raw.payload
    imei = device_imei(raw)
    start = event_time(p.get("startTime"), "startTime", raw, ctx)
    end = event_time(p.get("endTime"), "endTime", raw, ctx)
    if end < start:
        raise RejectedRecord(f"endTime {f.iso(end)} is before startTime")
    distance = f.number(f.first(p, "distance", "mileage"), "distance")
    if distance is None or distance < 0:
        raise RejectedRecord("distance is missing or negative")
    start_lat, start_lng = optional_coordinates(p, "startLat", "startLng")
    end_lat, end_lng = optional_coordinates(p, "endLat", "endLng")
    run_time = f.integer(
        f.first(p, "runTimeSecond", "elapsed"), "runTimeSecond", f.INT64
    )
    return {
        "trip_id": trip_id(imei, start, PLATFORM),
        "imei": imei,
        "source": PLATFORM,
        "start_time": start,
        "end_time": end,
        "start_lat": start_lat,
        "start_lng": start_lng,
        "end_lat": end_lat,
        "end_lng": end_lng,
        "distance_m": distance * ctx.trip_distance_to_m,
        "distance_source": PLATFORM,
        "gps_distance_m": None,
        "duration_s": run_time if run_time is not None else (end - start) // 1000,
        "max_speed_kmh": f.speed_kmh(p.get("maxSpeed"), "maxSpeed"),
        "avg_speed_kmh": f.speed_kmh(p.get("avgSpeed"), "avgSpeed"),
        "start_odometer_m": None,
        "end_odometer_m": None,
        "driver_name": None,
        "vehicle_number": None,
        "computed_at": raw.received_at,
    }

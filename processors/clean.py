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
from zoneinfo import ZoneInfo

from fleetstream.errors import RejectedRecord
from fleetstream.settings import Settings
from processors import fields as f
from processors.plates import normalize_plate

# No Tracksolid device reports before this; older times are unset device clocks.
EARLIEST_PLAUSIBLE_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
IMEI_LENGTH = 15


@dataclass(frozen=True)
class CleanContext:
    """Settings the cleaning rules depend on."""

    platform_zone: ZoneInfo
    future_tolerance_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanContext:
        return cls(
            platform_zone=ZoneInfo(settings.platform_timezone),
            future_tolerance_ms=int(settings.future_fix_tolerance_seconds * 1000),
        )


@dataclass(frozen=True)
class Raw:
    """The envelope of one raw record with its payload decoded from JSON."""

    source: str
    origin: str
    received_at: int
    imei: str | None
    payload: dict

    @classmethod
    def from_event(cls, event: dict) -> Raw:
        """Return the envelope of a decoded ``RawEvent``; reject bad payloads."""
        try:
            payload = json.loads(event["payload"])
        except ValueError:
            raise RejectedRecord("payload is not JSON") from None
        if not isinstance(payload, dict):
            raise RejectedRecord(
                f"payload is a JSON {type(payload).__name__}, expected an object"
            )
        received = event["received_at"]
        received_ms = (
            received if isinstance(received, int) else int(received.timestamp() * 1000)
        )
        return cls(
            event["source"], event["origin"], received_ms, event.get("imei"), payload
        )


def device_imei(raw: Raw, record: dict | None = None) -> str:
    """Return the IMEI of the record, falling back to the envelope's."""
    value = f.first(record if record is not None else raw.payload, "imei", "deviceImei")
    imei = f.text(value) if value is not None else f.text(raw.imei)
    if imei is None:
        raise RejectedRecord("no IMEI in the record or its envelope")
    if len(imei) != IMEI_LENGTH or not imei.isdigit():
        raise RejectedRecord(f"IMEI is not {IMEI_LENGTH} digits: {imei!r:.20}")
    return imei


def event_time(
    value: object, field: str, raw: Raw, ctx: CleanContext, *, required: bool = True
) -> int | None:
    """Return a record time in epoch ms, rejecting missing, future or unset ones."""
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


def coordinates(record: dict, lat_field: str = "lat", lng_field: str = "lng"):
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


def optional_coordinates(record: dict, lat_field: str = "lat", lng_field="lng"):
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
        **_envelope(raw),
    }


# Heartbeats -------------------------------------------------------------------


def clean_heartbeat(raw: Raw, ctx: CleanContext) -> dict:
    """Return a ``Heartbeat`` from a /pushhb record."""
    p = raw.payload
    return {
        "imei": device_imei(raw),
        "hb_time": event_time(f.first(p, "gateTime", "hbTime"), "gateTime", raw, ctx),
        "acc_on": f.acc(f.first(p, "acc", "accStatus")),
        "power_level": f.integer(p.get("powerLevel"), "powerLevel"),
        "gsm_signal": f.integer(p.get("gsmSign"), "gsmSign"),
        "gps_positioned": f.flag(p.get("gpsPos"), "gpsPos"),
        "fuel_cut": f.flag(p.get("oilEle"), "oilEle"),
        "remote_lock": f.flag(p.get("remoteLock"), "remoteLock"),
        "charging": f.flag(p.get("powerStatus"), "powerStatus"),
        "armed": f.flag(p.get("fortify"), "fortify"),
        "battery_pct": None,
        "external_voltage": None,
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
        "hb_time": event_time(p.get("hbTime"), "hbTime", raw, ctx),
        "acc_on": f.acc(p.get("accStatus")),
        "power_level": None,
        "gsm_signal": f.integer(p.get("gpsSignal"), "gpsSignal"),
        "gps_positioned": None,
        "fuel_cut": None,
        "remote_lock": None,
        "charging": None,
        "armed": None,
        "battery_pct": f.number(p.get("electQuantity"), "electQuantity"),
        "external_voltage": f.number(p.get("powerValue"), "powerValue"),
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

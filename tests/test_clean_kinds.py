"""Cleaning every non-position kind: exact outputs from the platform's shapes."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fleetstream.codec import codec
from fleetstream.errors import RejectedRecord
from processors import clean
from processors.clean import CleanContext, Raw

SAMPLES = Path(__file__).parent / "fixtures" / "tracksolid"
RECEIVED = 1741590000000  # 2025-03-10T07:00:00Z
CTX = CleanContext(ZoneInfo("UTC"), future_tolerance_ms=300_000)
IMEI = "860001000000011"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text + "+00:00").timestamp() * 1000)


def raw(origin: str, payload: dict, *, imei=None, source="poll") -> Raw:
    return Raw(source, origin, RECEIVED, imei, payload)


def envelope(origin: str, source="poll") -> dict:
    return {"source": source, "origin": origin, "received_at": RECEIVED}


def form(name: str) -> dict:
    return dict(urllib.parse.parse_qsl((SAMPLES / name).read_text().strip()))


def result(name: str):
    return json.loads((SAMPLES / name).read_text())


def encodes(schema: str, record: dict) -> dict:
    """Return the record after a round trip through its clean topic's codec."""
    return codec(schema).decode(codec(schema).encode(record))


# Heartbeats ---------------------------------------------------------------------


def test_pushhb_heartbeat():
    record = json.loads(form("push_pushhb.form.txt")["data_list"])[0]
    cleaned = clean.clean_heartbeat(raw("pushhb", record, source="push"), CTX)
    assert cleaned == {
        "imei": IMEI,
        "heartbeat_time": ms("2025-03-10 06:21:00"),
        "acc_on": True,
        "power_level": 6,
        "gsm_signal": 4,
        "gps_positioned": True,
        "fuel_cut": False,
        "remote_lock": False,
        "charging": True,
        "armed": False,
        "battery_pct": None,
        "voltage_v": None,
        **envelope("pushhb", "push"),
    }
    encodes("Heartbeat", cleaned)


def test_heartbeat_flag_that_is_not_0_or_1_is_rejected():
    record = {"deviceImei": IMEI, "gateTime": "2025-03-10 06:21:00", "gpsPos": "maybe"}
    with pytest.raises(RejectedRecord, match="gpsPos is not a 0/1 flag"):
        clean.clean_heartbeat(raw("pushhb", record), CTX)


def test_heartbeat_from_a_repeated_location_snapshot():
    record = result("location_list_response.json")["result"][1]
    cleaned = clean.heartbeat_from_location(
        raw("jimi.user.device.location.list", record), CTX
    )
    assert cleaned["heartbeat_time"] == ms("2025-03-10 02:47:03")
    assert (cleaned["acc_on"], cleaned["gsm_signal"], cleaned["battery_pct"]) == (
        False,
        1,
        63.0,
    )
    assert cleaned["voltage_v"] is None


# Alarms ---------------------------------------------------------------------------


def test_alarm_list_rows():
    rows = result("alarm_list_response.json")["result"]
    cleaned = [clean.clean_alarm(raw("jimi.device.alarm.list", r), CTX) for r in rows]
    assert cleaned[2] == {
        "imei": IMEI,
        "alarm_type": "in",
        "alarm_time": ms("2025-03-10 04:09:12"),
        "alarm_name": "Enter geo-fence",
        "lat": -1.300331,
        "lng": 36.853005,
        "speed_kmh": 12.0,
        "position_time": ms("2025-03-10 04:09:10"),
        "fence_id": "b0b1b2b3b4b5b6b7b8b9c0c1c2c3c4c5",
        "alert_value": None,
        "device_model": "JC400P",
        **envelope("jimi.device.alarm.list"),
    }
    assert [c["alarm_type"] for c in cleaned] == ["ACC_ON", "48", "in", "2"]
    assert cleaned[0]["fence_id"] is None  # geoid "" is missing
    encodes("Alarm", cleaned[2])


def test_open_api_alarm_push():
    data = json.loads(form("push_jimi_device_alarm.form.txt")["data"])
    cleaned = clean.clean_alarm(raw("jimi.push.device.alarm", data, source="push"), CTX)
    assert cleaned == {
        "imei": IMEI,
        "alarm_type": "6",
        "alarm_time": ms("2025-03-10 06:20:33"),
        "alarm_name": "Overspeed alert",
        "lat": -1.263,
        "lng": 36.8045,
        "speed_kmh": None,
        "position_time": None,
        "fence_id": None,
        "alert_value": None,
        "device_model": None,
        **envelope("jimi.push.device.alarm", "push"),
    }


def test_pushalarm_iot_hub_shape():
    record = json.loads(form("push_pushalarm.form.txt")["data_list"])[0]
    cleaned = clean.clean_alarm(raw("pushalarm", record, source="push"), CTX)
    assert cleaned == {
        "imei": IMEI,
        "alarm_type": "6",
        "alarm_time": ms("2025-03-10 06:20:33"),
        "alarm_name": None,
        "lat": -1.263,
        "lng": 36.8045,
        "speed_kmh": 83.0,
        "position_time": None,
        "fence_id": None,
        "alert_value": None,
        "device_model": None,
        **envelope("pushalarm", "push"),
    }


def test_pushalarm_iot_hub_msg_sent_as_json_text_and_without_alarm_time():
    msg = {"deviceImei": IMEI, "alertType": "1", "lat": 0, "lng": 0}
    record = {
        "type": "DEVICE",
        "gateTime": "2025-03-10 06:00:00",
        "msg": json.dumps(msg),
    }
    cleaned = clean.clean_alarm(raw("pushalarm", record), CTX)
    assert (cleaned["imei"], cleaned["alarm_type"]) == (IMEI, "1")
    assert cleaned["alarm_time"] == ms("2025-03-10 06:00:00")
    assert (cleaned["lat"], cleaned["lng"]) == (None, None)  # (0,0): no fix


def test_pushalarm_flat_shape():
    record = {
        "imei": IMEI,
        "alarmType": "1",
        "alarmName": "SOS",
        "alarmTime": "2025-03-10 06:10:00",
        "lat": "-1.2",
        "lng": "36.8",
    }
    cleaned = clean.clean_alarm(raw("pushalarm", record), CTX)
    assert (cleaned["alarm_type"], cleaned["alarm_name"]) == ("1", "SOS")
    assert (cleaned["lat"], cleaned["lng"]) == (-1.2, 36.8)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {"type": "VIN", "imei": IMEI, "msg": {"vin": "X"}},
            "type 'VIN' is not an alarm",
        ),
        ({"type": "DEVICE", "imei": IMEI, "msg": "[1]"}, "msg is not a JSON object"),
        ({"imei": IMEI, "alarmTime": "2025-03-10 06:10:00"}, "alarm type is missing"),
        ({"imei": IMEI, "alarmType": "1"}, "alarmTime is missing"),
    ],
)
def test_unusable_alarms_are_rejected(record, reason):
    with pytest.raises(RejectedRecord, match=reason):
        clean.clean_alarm(raw("pushalarm", record), CTX)


# Devices ---------------------------------------------------------------------------


def test_device_list_rows():
    rows = result("device_list_response.json")["result"]
    cleaned = [clean.clean_device(raw("jimi.user.device.list", r), CTX) for r in rows]
    assert cleaned[0] == {
        "imei": IMEI,
        "device_name": "KZZ 101A",
        "vehicle_number": "KZZ 101A",
        "vehicle_number_norm": "KZZ101A",
        "vehicle_name": "Pickup 01",
        "vehicle_model": "Generic Pickup",
        "vehicle_icon": "truck",
        "device_model": "JC400P",
        "sim": "254700000001",
        "vin": None,
        "driver_name": "Amani Testdriver",
        "driver_phone": "+254700000101",
        "device_group": "Default group",
        "enabled": True,
        "expires_at": ms("2035-03-31 23:59:59"),
        "activated_at": ms("2024-04-02 08:15:11"),
        "account": None,
        "source": "poll",
        "received_at": RECEIVED,
    }
    expired = cleaned[2]
    assert (expired["vehicle_number"], expired["vehicle_number_norm"]) == (None, None)
    assert (expired["enabled"], expired["driver_name"]) == (False, None)
    encodes("Device", cleaned[0])


# Events, LBS -----------------------------------------------------------------------


def test_pushevent_login():
    record = {
        "deviceImei": IMEI,
        "type": "login",
        "gateTime": "2025-03-10 06:00:00",
        "timezone": "GMT+03:00",
    }
    cleaned = clean.clean_event(raw("pushevent", record, source="push"), CTX)
    assert cleaned == {
        "imei": IMEI,
        "event_type": "LOGIN",
        "event_time": ms("2025-03-10 06:00:00"),
        "device_timezone": "GMT+03:00",
        "detail": json.dumps(record, separators=(",", ":")),
        **envelope("pushevent", "push"),
    }
    encodes("DeviceEvent", cleaned)


def test_pushlbs_cells():
    record = json.loads(form("push_pushlbs.form.txt")["data_list"])[0]
    cleaned = clean.clean_lbs(raw("pushlbs", record, source="push"), CTX)
    assert {k: v for k, v in cleaned.items() if k != "detail"} == {
        "imei": "860001000000029",
        "reading_time": ms("2025-03-10 06:22:10"),
        "pos_type": "LBS",
        "mcc": 639,
        "mnc": 2,
        "lac": 12011,
        "cell_id": 34501,
        "signal": -71,
        "cells": [
            {"lac": 12011, "cell_id": 34501, "signal": -71},
            {"lac": 12011, "cell_id": 34502, "signal": -83},
        ],
        **envelope("pushlbs", "push"),
    }
    assert encodes("LbsReading", cleaned)["cells"] == cleaned["cells"]


def test_pushlbs_without_cells_and_with_a_bad_cell_list():
    record = {"deviceImei": IMEI, "gateTime": "2025-03-10 06:22:10", "postType": "WIFI"}
    cleaned = clean.clean_lbs(raw("pushlbs", record), CTX)
    assert (cleaned["pos_type"], cleaned["cells"], cleaned["lac"]) == ("WIFI", [], None)
    record["lbsJson"] = '{"mcc": 639, "cellList": "12011"}'
    with pytest.raises(RejectedRecord, match="cellList entry is not LAC,CI,RSSI"):
        clean.clean_lbs(raw("pushlbs", record), CTX)


# OBD, faults, sensors ---------------------------------------------------------------


def test_obd_list_row():
    row = {
        "imei": IMEI,
        "dataReportTime": "2025-03-10 05:00:00",
        "odometerReading": "18234",
        "deviceAccumulatedMileage": "",
        "remainingFuel": "41",
        "remainingFuelPercentage": "62.5",
        "coolantTemperature": "88",
        "vehicleBatterVoltage": "13.9",
        "currentRPM": "1800",
        "currentSpeed": "54",
        "vin": "VIN0000000000001",
    }
    cleaned = clean.clean_obd(raw("jimi.device.obd.list", row), CTX)
    assert cleaned == {
        "imei": IMEI,
        "reading_time": ms("2025-03-10 05:00:00"),
        "rpm": 1800,
        "speed_kmh": 54.0,
        "coolant_c": 88.0,
        "fuel_level_pct": 62.5,
        "battery_v": 13.9,
        "vin": "VIN0000000000001",
        "extra": '{"odometerReading":"18234","remainingFuel":"41"}',
        **envelope("jimi.device.obd.list"),
    }
    encodes("ObdReading", cleaned)


def test_obd_fault_row_and_push():
    row = {
        "imei": IMEI,
        "deviceName": "KZZ 101A",
        "faultCode": "P0301",
        "faultDetail": "Cylinder 1 misfire",
        "eventTime": "2025-03-10 05:01:00",
    }
    cleaned = clean.clean_fault(raw("jimi.device.obd.fault", row), CTX)
    assert {k: v for k, v in cleaned.items() if k != "detail"} == {
        "imei": IMEI,
        "fault_code": "P0301",
        "reported_at": ms("2025-03-10 05:01:00"),
        "description": "Cylinder 1 misfire",
        **envelope("jimi.device.obd.fault"),
    }
    with pytest.raises(RejectedRecord, match="faultCode is missing"):
        clean.clean_fault(raw("pushfaultinfo", {"deviceImei": IMEI}), CTX)


def test_undocumented_sensor_pushes_keep_the_record():
    tem = {
        "deviceImei": IMEI,
        "gateTime": "2025-03-10 06:00:00",
        "temperature": "4.5",
        "humidity": 71,
        "sensor": "2",
    }
    cleaned = clean.clean_temperature(raw("pushtem", tem, source="push"), CTX)
    assert (cleaned["sensor"], cleaned["temperature_c"], cleaned["humidity_pct"]) == (
        2,
        4.5,
        71.0,
    )
    assert json.loads(cleaned["detail"]) == tem
    oil = {
        "deviceImei": IMEI,
        "gateTime": "2025-03-10 06:00:00",
        "oil": "55",
        "unit": 1,
    }
    fuel = clean.clean_fuel(raw("pushoil", oil, source="push"), CTX)
    assert (fuel["fuel_level_pct"], fuel["fuel_litres"]) == (None, None)
    assert json.loads(fuel["detail"]) == oil
    assert fuel["reading_time"] == ms("2025-03-10 06:00:00")
    encodes("TemperatureReading", cleaned)
    encodes("FuelReading", fuel)
    with pytest.raises(RejectedRecord, match="gateTime is missing"):
        clean.clean_fuel(raw("pushoil", {"deviceImei": IMEI}), CTX)


# Parking and platform trips ---------------------------------------------------------


def test_parking_rows_with_iso_z_times():
    rows = result("report_parking_response.json")["data"]["rows"]
    cleaned = clean.clean_parking(
        raw("jimi.open.platform.report.parking", rows[0]), CTX
    )
    assert cleaned == {
        "imei": IMEI,
        "kind": "parking",
        "start_time": ms("2025-03-09 16:40:02"),
        "end_time": ms("2025-03-10 03:58:10"),
        "duration_s": 40688,
        "stop_s": 40688,
        "lat": -1.3197,
        "lng": 36.7073,
        "address": "Karen, Nairobi, Kenya",
        **envelope("jimi.open.platform.report.parking"),
    }
    idling = clean.clean_parking(
        raw("jimi.open.platform.report.parking", {**rows[1], "acc": "on"}), CTX
    )
    assert idling["kind"] == "idling"
    with pytest.raises(RejectedRecord, match="parking or idling unknown"):
        clean.clean_parking(
            raw("jimi.open.platform.report.parking", {**rows[1], "acc": ""}), CTX
        )
    encodes("ParkingEvent", cleaned)


def test_track_mileage_trip_in_km():
    row = result("track_mileage_response.json")["result"][0]
    cleaned = clean.clean_trip(raw("jimi.device.track.mileage", row), CTX)
    start = ms("2025-03-10 03:58:10")
    assert cleaned == {
        "trip_id": str(
            uuid.uuid5(
                uuid.UUID("5d0f6f5e-3c1b-4e55-9a57-2f6a8b1c7e21"),
                f"{IMEI}|{start}|platform",
            )
        ),
        "imei": IMEI,
        "source": "platform",
        "start_time": start,
        "end_time": ms("2025-03-10 04:09:50"),
        "start_lat": -1.319167,
        "start_lng": 36.927778,
        "end_lat": -1.300052,
        "end_lng": 36.852961,
        "distance_m": 9420.0,
        "distance_source": "platform",
        "gps_distance_m": None,
        "duration_s": 700,
        "max_speed_kmh": 71.0,
        "avg_speed_kmh": 48.4,
        "start_odometer_m": None,
        "end_odometer_m": None,
        "driver_name": None,
        "vehicle_number": None,
        "computed_at": RECEIVED,
    }
    encodes("Trip", cleaned)


def test_trip_distance_in_metres_when_configured():
    row = result("track_mileage_response.json")["result"][0]
    metres = CleanContext(ZoneInfo("UTC"), 300_000, trip_distance_to_m=1.0)
    assert clean.clean_trip(raw("pushtripreport", row), metres)["distance_m"] == 9.42


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"endTime": "2025-03-10 03:00:00"}, "before startTime"),
        ({"distance": None}, "distance is missing"),
        ({"distance": -3}, "negative"),
        ({"startTime": ""}, "startTime is missing"),
    ],
)
def test_unusable_trips_are_rejected(fields, reason):
    row = {**result("track_mileage_response.json")["result"][0], **fields}
    with pytest.raises(RejectedRecord, match=reason):
        clean.clean_trip(raw("jimi.device.track.mileage", row), CTX)

"""Cleaning position fixes: every field variant the platform sends."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fleetstream.errors import RejectedRecord
from processors.clean import CleanContext, Raw, clean_position

SHARED = Path(os.environ.get("FLEETSTREAM_SHARED_DIR", "/work/shared"))
FIXTURES = Path(__file__).parent / "fixtures" / "tracksolid"
RECEIVED = 1741590000000  # 2025-03-10T07:00:00Z
UTC_CTX = CleanContext(ZoneInfo("UTC"), future_tolerance_ms=300_000)
T_0512 = 1741583560000  # 2025-03-10T05:12:40Z


def raw(origin: str, payload: dict, *, imei=None, source="poll", received=RECEIVED):
    return Raw(source, origin, received, imei, payload)


def push_records(name: str) -> list[dict]:
    body = (FIXTURES / name).read_text().strip()
    return json.loads(dict(urllib.parse.parse_qsl(body))["data_list"])


BASE = {
    "imei": "860001000000011",
    "gpsTime": "2025-03-10 05:12:40",
    "lat": -1.286389,
    "lng": 36.817223,
}


def fix(**fields) -> dict:
    payload = {**BASE, **fields}
    return clean_position(raw("jimi.device.location.get", payload), UTC_CTX)


def test_location_list_record_exactly():
    record = json.loads((FIXTURES / "location_list_response.json").read_text())[
        "result"
    ][0]
    cleaned = clean_position(raw("jimi.user.device.location.list", record), UTC_CTX)
    assert cleaned == {
        "imei": "860001000000011",
        "gps_time": T_0512,
        "lat": -1.286389,
        "lng": 36.817223,
        "speed_kmh": 42.0,
        "direction_deg": 118,
        "acc_on": True,
        "pos_type": "GPS",
        "satellites": 12,
        "altitude_m": None,
        "reupload": None,
        "odometer_m": 18234700.0,
        "source": "poll",
        "origin": "jimi.user.device.location.list",
        "received_at": RECEIVED,
    }


def test_track_list_points_take_the_imei_from_the_envelope():
    points = json.loads((FIXTURES / "track_list_response.json").read_text())["result"]
    cleaned = [
        clean_position(
            raw("jimi.device.track.list", point, imei="860001000000011"), UTC_CTX
        )
        for point in points
    ]
    first, second = cleaned[0], cleaned[2]
    assert first["imei"] == "860001000000011"
    # WIFI point: posType number 3, gpsSpeed -1 means unknown, ignition "ON".
    assert (first["pos_type"], first["speed_kmh"], first["acc_on"]) == (
        "WIFI",
        None,
        True,
    )
    # Numbers sent as strings: direction "291", gpsSpeed "55.0".
    assert (second["direction_deg"], second["speed_kmh"], second["satellites"]) == (
        291,
        55.0,
        12,
    )
    assert cleaned[4]["acc_on"] is False
    assert cleaned[2] == cleaned[3]  # the duplicated point cleans identically


def test_pushgps_records():
    late, zero = push_records("push_pushgps.form.txt")[1:]
    cleaned = clean_position(raw("pushgps", late, source="push"), UTC_CTX)
    assert cleaned == {
        "imei": "860001000000011",
        "gps_time": 1741585260000,  # 2025-03-10T05:41:00Z
        "lat": -1.27221,
        "lng": 36.82601,
        "speed_kmh": 0.0,
        "direction_deg": 0,
        "acc_on": True,
        "pos_type": "GPS",
        "satellites": 9,
        "altitude_m": 1661.0,
        "reupload": True,
        "odometer_m": 18231530.0,
        "source": "push",
        "origin": "pushgps",
        "received_at": RECEIVED,
    }
    with pytest.raises(RejectedRecord, match=r"\(0,0\)"):
        clean_position(raw("pushgps", zero, source="push"), UTC_CTX)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("accStatus", "1", True),
        ("accStatus", "0", False),
        ("acc", 1, True),
        ("acc", 0, False),
        ("ignition", "ON", True),
        ("ignition", "OFF", False),
        ("accStatus", "on", True),
        ("acc", True, True),
        ("acc", False, False),
        ("accStatus", None, None),
        ("accStatus", "", None),
        ("accStatus", "2", None),
    ],
)
def test_acc_variants(field, value, expected):
    assert fix(**{field: value})["acc_on"] is expected


def test_absent_acc_is_unknown_never_off():
    assert fix()["acc_on"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("posType", "GPS", "GPS"),
        ("posType", "lbs", "LBS"),
        ("posType", "WIFI", "WIFI"),
        ("posType", "BEACON", "BEACON"),
        ("posType", 1, "GPS"),
        ("posType", 2, "LBS"),
        ("posType", 3, "WIFI"),
        ("posType", 5, "BEACON"),
        ("posType", "3", "WIFI"),
        ("postType", 2, "LBS"),
        ("posType", 9, "UNKNOWN"),
        ("posType", "", "UNKNOWN"),
        ("posType", None, "UNKNOWN"),
    ],
)
def test_pos_type_variants(field, value, expected):
    assert fix(**{field: value})["pos_type"] == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"speed": "42"}, 42.0),
        ({"speed": 42.5}, 42.5),
        ({"gpsSpeed": "55.0"}, 55.0),
        ({"gpsSpeed": -1}, None),
        ({"gpsSpeed": "-1"}, None),
        ({"speed": ""}, None),
        ({"speed": None}, None),
        ({"speed": " 7 "}, 7.0),
    ],
)
def test_speed_is_kept_in_kmh(fields, expected):
    assert fix(**fields)["speed_kmh"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("118", 118),
        (297, 297),
        (-1, None),
        ("-1", None),
        (360, 0),
        (359.6, 0),
        (400, None),
        ("", None),
    ],
)
def test_direction(value, expected):
    assert fix(direction=value)["direction_deg"] == expected


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lat": 0, "lng": 0}, r"\(0,0\)"),
        ({"lat": "0", "lng": "0.0"}, r"\(0,0\)"),
        ({"lat": 91.0}, "out of range"),
        ({"lng": -180.5}, "out of range"),
        ({"lat": None}, "missing"),
        ({"lng": ""}, "missing"),
        ({"lat": "north"}, "lat is not a number"),
        ({"lat": True}, "boolean"),
        ({"speed": "fast"}, "speed is not a number"),
        ({"gpsTime": ""}, "gpsTime is missing"),
        ({"gpsTime": "yesterday"}, "gpsTime is not a time"),
        ({"gpsTime": "1970-01-01 00:00:00"}, "before 2000"),
        ({"imei": "86000100000001"}, "15 ASCII digits"),
        ({"imei": "86000100000001x"}, "15 ASCII digits"),
        ({"imei": None}, "no IMEI"),
    ],
)
def test_unusable_fixes_are_rejected_with_a_reason(fields, reason):
    with pytest.raises(RejectedRecord, match=reason):
        fix(**fields)


def test_nan_coordinates_are_rejected():
    payload = json.loads(
        '{"imei": "860001000000011", "lat": NaN, "lng": 36.8,'
        ' "gpsTime": "2025-03-10 05:12:40"}'
    )
    with pytest.raises(RejectedRecord, match="finite"):
        clean_position(raw("pushgps", payload), UTC_CTX)


def test_fix_in_the_future_beyond_tolerance_is_rejected():
    ok = fix(gpsTime="2025-03-10 07:05:00")  # 5 min after receipt: tolerated
    assert ok["gps_time"] == RECEIVED + 300_000
    with pytest.raises(RejectedRecord, match="300 s after the record was received"):
        fix(gpsTime="2025-03-10 07:05:01")


def test_zone_less_times_are_read_in_the_platform_zone():
    nairobi = CleanContext(ZoneInfo("Africa/Nairobi"), future_tolerance_ms=300_000)
    payload = {**BASE, "gpsTime": "2025-03-10 08:12:40"}
    cleaned = clean_position(raw("pushgps", payload), nairobi)
    assert cleaned["gps_time"] == T_0512  # 08:12:40 EAT is 05:12:40 UTC


@pytest.mark.parametrize(
    "value",
    [
        "2025-03-10T05:12:40.000Z",
        "2025-03-10T08:12:40+03:00",
        1741583560,
        1741583560000,
        "1741583560",
        "1741583560000",
    ],
)
def test_iso_and_unix_times(value):
    assert fix(gpsTime=value)["gps_time"] == T_0512


def test_real_location_list_from_the_field():
    body = json.loads(
        (
            SHARED
            / "realdata"
            / "tracksolid-api-samples"
            / "location_list.realapp.json"
        ).read_text()
    )
    ctx = CleanContext(ZoneInfo("UTC"), future_tolerance_ms=300_000)
    received = 1585926000000  # 2020-04-03T15:00:00Z, the day the bodies were captured
    cleaned = [
        clean_position(
            raw("jimi.user.device.location.list", item, received=received + 3_600_000),
            ctx,
        )
        for item in body["data"]
    ]
    assert [c["imei"] for c in cleaned] == [item["imei"] for item in body["data"]]
    assert all(c["acc_on"] is None for c in cleaned)  # accStatus null: unknown
    assert cleaned[1]["speed_kmh"] == 38.0
    assert cleaned[0]["gps_time"] == 1585858526000  # 2020-04-02 20:15:26 UTC
    assert all(c["pos_type"] == "GPS" for c in cleaned)


def test_real_track_list_from_the_field():
    body = json.loads(
        (
            SHARED
            / "realdata"
            / "tracksolid-api-samples"
            / "jimi.device.track.list.response.json"
        ).read_text()
    )
    received = 1584885600000  # 2020-03-22T14:00:00Z
    cleaned = [
        clean_position(
            raw(
                "jimi.device.track.list",
                point,
                imei="868120169000012",
                received=received,
            ),
            UTC_CTX,
        )
        for point in body["result"]
    ]
    assert [(c["speed_kmh"], c["direction_deg"], c["pos_type"]) for c in cleaned] == [
        (51.0, 310, "GPS"),
        (60.0, 317, "GPS"),
    ]
    assert cleaned[1]["gps_time"] - cleaned[0]["gps_time"] == 10_000


def test_a_payload_with_an_escaped_lone_surrogate_is_cleaned():
    # A device name cut inside an emoji: valid JSON text that orjson refuses.
    payload = json.dumps({**BASE, "deviceName": "Truck \ud83d"})
    assert "\\ud83d" in payload
    event = {
        "source": "poll",
        "origin": "jimi.device.location.get",
        "received_at": RECEIVED,
        "imei": None,
        "payload": payload,
    }
    record = clean_position(Raw.from_event(event), UTC_CTX)
    assert (record["imei"], record["gps_time"]) == (BASE["imei"], T_0512)


def test_received_at_as_a_datetime_keeps_its_millisecond():
    from datetime import UTC, datetime

    event = {
        "source": "push",
        "origin": "/pushgps",
        "received_at": datetime(2004, 1, 14, 0, 0, 1, 597_000, tzinfo=UTC),
        "imei": None,
        "payload": "{}",
    }
    assert Raw.from_event(event).received_at == 1_074_038_401_597

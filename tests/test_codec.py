"""The codec's own field writers write exactly what fastavro writes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from fastavro.utils import generate_many

from fleetstream.codec import SCHEMA_DIR, codec, field_writers

SCHEMAS = sorted(path.stem for path in SCHEMA_DIR.glob("*.avsc"))
# Values that sit on the edges of what each Avro type takes, or past them.
EDGE_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    63,
    -64,
    8191,
    -8193,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**63 - 1,
    2**63,
    -(2**63),
    2**1100,
    0.0,
    -0.0,
    1.5,
    1e308,
    math.inf,
    math.nan,
    "",
    "GPS",
    "Nairobi – Ле́нин 京A·12345",
    "\ud800",
    b"",
    b"\x00\xff",
    datetime(2025, 3, 10, 5, 12, 40, tzinfo=UTC),
    [],
    {},
]


def fastavro_outcome(record_codec, record) -> bytes | type:
    try:
        return record_codec.encode_with_fastavro(record)
    except Exception as exc:  # noqa: BLE001 - the exception type is the outcome
        return type(exc)


def outcome(record_codec, record) -> bytes | type:
    try:
        return record_codec.encode(record)
    except Exception as exc:  # noqa: BLE001 - the exception type is the outcome
        return type(exc)


@pytest.mark.parametrize("name", SCHEMAS)
def test_generated_records_encode_to_fastavros_bytes(name):
    record_codec = codec(name)

    for record in generate_many(record_codec.schema, 200):
        assert record_codec.encode(record) == record_codec.encode_with_fastavro(record)


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_edge_value_in_every_field_gives_fastavros_outcome(name):
    record_codec = codec(name)
    base = next(iter(generate_many(record_codec.schema, 1)))

    for field in record_codec.schema["fields"]:
        for value in EDGE_VALUES:
            record = {**base, field["name"]: value}
            assert outcome(record_codec, record) == fastavro_outcome(
                record_codec, record
            ), (field["name"], value)
        missing = {k: v for k, v in base.items() if k != field["name"]}
        assert outcome(record_codec, missing) == fastavro_outcome(
            record_codec, missing
        ), (field["name"], "missing")


def test_flat_contracts_get_field_writers_and_the_rest_fastavro():
    flat = {name for name in SCHEMAS if field_writers(codec(name).schema)}

    assert "Position" in flat
    assert "RawEvent" in flat
    assert "LbsReading" not in flat


def test_a_clean_position_is_written_by_the_field_writers():
    position = codec("Position")
    record = {
        "imei": "860001000000011",
        "gps_time": 1_741_583_560_000,
        "lat": -1.286389,
        "lng": 36.817223,
        "speed_kmh": 42.0,
        "direction_deg": 297,
        "acc_on": True,
        "pos_type": "GPS",
        "satellites": None,
        "altitude_m": 1676.0,
        "reupload": False,
        "odometer_m": None,
        "source": "poll",
        "origin": "jimi.user.device.location.list",
        "received_at": 1_741_583_580_000,
    }
    writers = field_writers(position.schema)

    body = b"".join(write(record[name]) for name, write in writers)

    assert position.header + body == position.encode_with_fastavro(record)
    assert position.encode(record) == position.header + body
    assert position.decode(position.encode(record))["direction_deg"] == 297


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 2, 6, 0, 0, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime.fromisoformat("2026-03-02T09:00:00.123456+03:00"),
        datetime.fromisoformat("2026-03-02T01:30:00.000001-05:30"),
        datetime(2026, 3, 2, 6, 0),  # naive: fastavro's own reading of it
    ],
)
def test_datetimes_are_written_as_fastavro_writes_them(moment):
    position = codec("Position")
    record = {f["name"]: f.get("default") for f in position.schema["fields"]}
    record.update(
        imei="860000000000011",
        gps_time=moment,
        lat=-1.3,
        lng=36.8,
        source="poll",
        origin="jimi.device.track.list",
        received_at=moment,
    )
    if moment.tzinfo is not None:
        # The field writer takes it itself rather than handing it to fastavro.
        dict(field_writers(position.schema))["gps_time"](moment)
    assert position.encode(record) == position.encode_with_fastavro(record)

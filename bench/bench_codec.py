"""Compare the ``avro`` package with fastavro on our own contracts.

For each schema, encodes and decodes the same realistic records with both
libraries (schema-less binary bodies, as ``fleetstream.codec`` writes after its
10-byte header) and prints records/s and the fastavro / avro ratio. Times are
passed as datetimes, which both libraries accept for ``timestamp-millis``.

Then it measures ``fleetstream.codec``'s own encoder, per-field writers built
once for flat records, against fastavro's ``schemaless_writer`` on the same
records, the measurement that keeps that encoder instead of fastavro alone.
Run: ``python -m bench.bench_codec [--seconds S] [--figures PATH]``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from datetime import UTC, datetime

import avro.io
import avro.schema
import fastavro
from fastavro.schema import parse_schema

from bench.figures import Figure, write_figures
from fleetstream.codec import SCHEMA_DIR, codec

AT = datetime(2025, 3, 10, 5, 12, 40, tzinfo=UTC)

RECORDS: dict[str, dict] = {
    "RawEvent": {
        "source": "push",
        "origin": "pushgps",
        "received_at": AT,
        "imei": "860001000000011",
        "payload": json.dumps(
            {
                "deviceImei": "860001000000011",
                "gpsTime": "2025-03-10 06:20:30",
                "lat": -1.2631,
                "lng": 36.80465,
                "gpsSpeed": 83,
                "direction": 297,
                "satelliteNum": 13,
                "gpsMode": 0,
                "postType": 1,
                "acc": 1,
            }
        ),
        "request_id": "3f1c0e1e-2b7d-4a53-9d55-f0f0a9b0c001",
    },
    "Position": {
        "imei": "860001000000011",
        "gps_time": AT,
        "lat": -1.286389,
        "lng": 36.817223,
        "speed_kmh": 42.0,
        "direction_deg": 118,
        "acc_on": True,
        "pos_type": "GPS",
        "satellites": 12,
        "altitude_m": None,
        "reupload": False,
        "odometer_m": 18234700.0,
        "source": "poll",
        "origin": "jimi.user.device.location.list",
        "received_at": AT,
    },
    "Alarm": {
        "imei": "860001000000011",
        "alarm_type": "48",
        "alarm_time": AT,
        "alarm_name": "Sudden Deceleration Alert",
        "lat": -1.309321,
        "lng": 36.880114,
        "speed_kmh": 61.0,
        "position_time": AT,
        "fence_id": None,
        "alert_value": None,
        "device_model": "JC400P",
        "source": "poll",
        "origin": "jimi.device.alarm.list",
        "received_at": AT,
    },
    "DeadLetter": {
        "stage": "process",
        "reason": "coordinates are the (0,0) no-fix sentinel",
        "origin_topic": "fleetstream.raw.position",
        "origin_partition": 3,
        "origin_offset": 123456,
        "key": b"860001000000037",
        "value": b"\xc3\x01" + bytes(200),
        "failed_at": AT,
    },
}


def fastavro_rate(schema: dict, record: dict, seconds: float) -> float:
    """Return encode+decode round trips per second with fastavro."""
    parsed = parse_schema(schema)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(500):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, record)
            fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed, parsed)
        count += 500
    return count / (time.perf_counter() - started)


def avro_rate(schema: dict, record: dict, seconds: float) -> float:
    """Return encode+decode round trips per second with the avro package."""
    parsed = avro.schema.parse(json.dumps(schema))
    writer = avro.io.DatumWriter(parsed)
    reader = avro.io.DatumReader(parsed, parsed)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            buf = io.BytesIO()
            writer.write(record, avro.io.BinaryEncoder(buf))
            reader.read(avro.io.BinaryDecoder(io.BytesIO(buf.getvalue())))
        count += 100
    return count / (time.perf_counter() - started)


def same_bytes(schema: dict, record: dict) -> bool:
    """Return True when both libraries write identical bodies."""
    fast = io.BytesIO()
    fastavro.schemaless_writer(fast, parse_schema(schema), record)
    slow = io.BytesIO()
    writer = avro.io.DatumWriter(avro.schema.parse(json.dumps(schema)))
    writer.write(record, avro.io.BinaryEncoder(slow))
    return fast.getvalue() == slow.getvalue()


def as_millis(record: dict) -> dict:
    """Return ``record`` with every datetime as epoch milliseconds."""
    return {
        k: int(v.timestamp() * 1000) if isinstance(v, datetime) else v
        for k, v in record.items()
    }


def encode_rate(encode, record: dict, seconds: float) -> float:
    """Return encodes per second of ``encode(record)``."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(1000):
            encode(record)
        count += 1000
    return count / (time.perf_counter() - started)


def main(seconds: float) -> list[Figure]:
    """Print both rates and their ratio for every benchmarked schema."""
    figures = []
    print(f"{'schema':<12}{'avro rec/s':>14}{'fastavro rec/s':>16}{'ratio':>8}  bytes")
    for name, record in RECORDS.items():
        schema = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        slow = avro_rate(schema, record, seconds)
        fast = fastavro_rate(schema, record, seconds)
        same = "identical" if same_bytes(schema, record) else "DIFFER"
        print(f"{name:<12}{slow:>14,.0f}{fast:>16,.0f}{fast / slow:>8.1f}  {same}")
        if same != "identical":
            raise RuntimeError(f"fastavro and avro write {name} differently")
        figures.append(Figure(f"codec {name} fastavro vs avro", "rec/s", fast, slow))
    # The processor hands the codec times as epoch milliseconds; a datetime
    # makes the field writers give the record to fastavro instead.
    print(
        f"\n{'schema':<12}{'times as':>10}{'fastavro enc/s':>16}{'codec enc/s':>14}"
        f"{'ratio':>8}  bytes"
    )
    for name, record in RECORDS.items():
        ours = codec(name)
        for times, value in (("millis", as_millis(record)), ("datetime", record)):
            plain = encode_rate(ours.encode_with_fastavro, value, seconds)
            fields = encode_rate(ours.encode, value, seconds)
            same = ours.encode(value) == ours.encode_with_fastavro(value)
            print(
                f"{name:<12}{times:>10}{plain:>16,.0f}{fields:>14,.0f}"
                f"{fields / plain:>8.1f}  {'identical' if same else 'DIFFER'}"
            )
            if not same:
                raise RuntimeError(f"the codec and fastavro write {name} differently")
            figures.append(
                Figure(
                    f"codec {name} encode, times as {times}: field writers / fastavro",
                    "rec/s",
                    fields,
                    plain,
                )
            )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per library")
    parser.add_argument("--figures", help="also write the headline figures here")
    args = parser.parse_args()
    write_figures(args.figures, main(args.seconds))

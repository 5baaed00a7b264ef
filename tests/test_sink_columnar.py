"""Batch decoding into columns and binary COPY, against fastavro and PostgreSQL."""

from __future__ import annotations

import io
import json
import logging
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import fastavro
import polars as pl
import pytest

from fleetstream.codec import (
    MAGIC,
    SCHEMA_DIR,
    Codec,
    codec,
    load_schema_file,
    schema_fingerprint,
)
from sinks.columnar import INDEX, CopyEncoder, FrameDecoder
from sinks.kinds import POSITION, SINKS
from sinks.writer import ROW_ERRORS, BatchWriter

BASE = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
POSITION_SCHEMA = SCHEMA_DIR / "Position.avsc"


def fix(i: int, rng: random.Random) -> dict:
    """A position whose values cross the varint and null boundaries."""
    nullable = rng.random() < 0.3
    return {
        "imei": f"86{i:013d}",
        "gps_time": BASE + timedelta(milliseconds=rng.randrange(-(2**41), 2**41)),
        "lat": rng.uniform(-90, 90),
        "lng": rng.uniform(-180, 180),
        "speed_kmh": None if nullable else rng.uniform(0, 200),
        "direction_deg": None if nullable else rng.choice([0, 63, 64, 359, -1]),
        "acc_on": None if nullable else rng.random() < 0.5,
        "pos_type": rng.choice(["GPS", "LBS", "WIFI", "", "é" * rng.randrange(70)]),
        "satellites": None if nullable else rng.choice([0, 1, 8191, 8192, -8193]),
        "altitude_m": None if nullable else -12.5,
        "reupload": None if nullable else False,
        "odometer_m": None if nullable else rng.uniform(0, 1e9),
        "source": rng.choice(["poll", "push", "backfill"]),
        "origin": "x" * rng.choice([0, 63, 64, 127, 128, 8191, 8192]),
        "received_at": BASE + timedelta(seconds=i),
    }


def decoder(position_codec=None) -> FrameDecoder:
    return FrameDecoder(position_codec or codec("Position"), POSITION.source_fields())


def expected_rows(records: list[dict]) -> list[tuple]:
    return [tuple(r[c] for c in POSITION.columns) for r in records]


def positions_frame(records: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        expected_rows(records), schema=list(POSITION.columns), orient="row"
    ).with_columns(pl.Series(INDEX, range(len(records)), dtype=pl.Int64))


def with_impossible_time(frame: pl.DataFrame, at: int) -> pl.DataFrame:
    """Return ``frame`` with row ``at``'s fix time far beyond PostgreSQL's range."""
    physical = pl.col("gps_time").dt.cast_time_unit("ms").cast(pl.Int64)
    return frame.with_columns(
        pl.when(pl.col(INDEX) == at)
        .then(pl.lit(2**62))
        .otherwise(physical)
        .cast(pl.Datetime("ms", "UTC"))
        .alias("gps_time")
    )


def rows_of(frame: pl.DataFrame) -> list[tuple]:
    return frame.select(POSITION.columns).rows()


def test_block_decoding_matches_fastavro_record_by_record(caplog):
    rng = random.Random(7)
    records = [fix(i, rng) for i in range(2000)]
    encoder = codec("Position")
    values = [encoder.encode(r) for r in records]

    with caplog.at_level(logging.INFO, logger="sinks.columnar"):
        decoded = decoder().decode(values)

    # Valid records are proven read from their own bytes as one block: a proof
    # that refused them would still give these rows, one record at a time.
    assert not caplog.records
    assert decoded.failed == []
    assert decoded.frame[INDEX].to_list() == list(range(len(values)))
    assert rows_of(decoded.frame) == [
        tuple(encoder.decode(v)[c] for c in POSITION.columns) for v in values
    ]
    assert rows_of(decoded.frame) == expected_rows(records)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda v: v[:-3], id="truncated"),
        pytest.param(lambda v: v[:10] + b"\x7f" + v[11:], id="string length"),
        pytest.param(lambda v: v[:10], id="empty body"),
        pytest.param(lambda v: v + b"\x02\x02", id="trailing bytes"),
    ],
)
def test_a_corrupt_body_never_shifts_its_neighbours(corrupt):
    rng = random.Random(11)
    records = [fix(i, rng) for i in range(300)]
    encoder = codec("Position")
    values = [encoder.encode(r) for r in records]
    values[150] = corrupt(values[150])

    # Whatever the reader makes of the bad bytes, every other record is read
    # from its own bytes, exactly as fastavro reads it alone.
    assert_read_as_fastavro_reads_each(values)


def read_alone(value: bytes) -> tuple | None:
    """Return the row fastavro reads from ``value`` alone, or None when it
    cannot read it or reads leaving bytes over."""
    buf = io.BytesIO(value)
    buf.seek(10)
    try:
        record = fastavro.schemaless_reader(buf, codec("Position").schema, None)
    except Exception:  # noqa: BLE001
        return None
    if buf.tell() != len(value):
        return None
    return tuple(record[c] for c in POSITION.columns)


def assert_read_as_fastavro_reads_each(values: list[bytes]) -> None:
    decoded = decoder().decode(values)
    expected = [(i, read_alone(v)) for i, v in enumerate(values)]
    kept = [(i, row) for i, row in expected if row is not None]
    indexes = decoded.frame[INDEX].to_list()
    assert list(zip(indexes, rows_of(decoded.frame), strict=True)) == kept
    assert [i for i, _ in decoded.failed] == [i for i, row in expected if row is None]
    assert all(reason.startswith("undecodable") for _, reason in decoded.failed)


def test_any_one_byte_changed_anywhere_in_a_record_reads_as_fastavro_reads_it():
    rng = random.Random(23)
    records = [fix(i, rng) for i in range(8)]
    # Every field present, so that every union branch and boolean byte exists.
    records[4].update(
        speed_kmh=12.5,
        direction_deg=90,
        acc_on=True,
        satellites=7,
        altitude_m=1600.0,
        reupload=False,
        odometer_m=5.0,
    )
    encoder = codec("Position")
    values = [encoder.encode(r) for r in records]
    clean = values[4]
    for at in range(10, len(clean)):
        for byte in {0x00, 0x01, 0x02, 0x03, 0x7F, 0xFF, clean[at] ^ 0x01}:
            values[4] = clean[:at] + bytes([byte]) + clean[at + 1 :]
            assert_read_as_fastavro_reads_each(values)


@pytest.mark.parametrize(
    ("field", "value"),
    [("direction_deg", 2**40), ("direction_deg", 2**31), ("satellites", -(2**31) - 1)],
)
def test_an_int_beyond_32_bits_is_dead_lettered_alone(field, value):
    # The same bytes as the current schema but with "long" where it says "int":
    # a writer that ignores the contract.
    wide = json.loads(POSITION_SCHEMA.read_text())
    for f in wide["fields"]:
        if f["name"] == field:
            f["type"] = ["null", "long"]
    wide = fastavro.parse_schema(wide)
    encoder = codec("Position")
    rng = random.Random(2)
    records = [fix(i, rng) for i in range(9)]
    values = [encoder.encode(r) for r in records]
    buf = io.BytesIO()
    buf.write(encoder.header)
    fastavro.schemaless_writer(buf, wide, {**records[4], field: value})
    values[4] = buf.getvalue()

    decoded = decoder().decode(values)

    assert decoded.failed == [(4, "undecodable: a value beyond its Avro type")]
    assert rows_of(decoded.frame) == expected_rows(records[:4] + records[5:])


def plain_position(**changes) -> dict:
    """The Position schema without logical types, with ``changes`` to fields."""
    schema = json.loads(POSITION_SCHEMA.read_text())
    for f in schema["fields"]:
        if isinstance(f["type"], dict):
            f["type"] = f["type"]["type"]
        f["type"] = changes.get(f["name"], f["type"])
    return fastavro.parse_schema(schema)


def encode_as(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(codec("Position").header)
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


# fastavro reads branch -1 (0x01) as the last branch, so it is left out.
@pytest.mark.parametrize("branch", [b"\x03", b"\x04", b"\x06", b"\x42"])
def test_a_union_branch_fastavro_refuses_is_refused_in_a_block(branch):
    encoder = codec("Position")
    rng = random.Random(4)
    records = [fix(i, rng) for i in range(6)]
    values = [encoder.encode(r) for r in records]
    # speed_kmh's branch index follows imei, gps_time, lat and lng.
    first = {"type": "record", "name": "P", "fields": encoder.schema["fields"][:4]}
    prefix = io.BytesIO()
    fastavro.schemaless_writer(prefix, fastavro.parse_schema(first), records[3])
    at = 10 + len(prefix.getvalue())
    assert values[3][at : at + 1] in (b"\x00", b"\x02")
    values[3] = values[3][:at] + branch + values[3][at + 1 :]

    decoded = decoder().decode(values)

    assert [i for i, _ in decoded.failed] == [3]
    assert rows_of(decoded.frame) == expected_rows(records[:3] + records[4:])


@pytest.mark.parametrize("byte", [b"\x02", b"\x03", b"\xff"])
def test_a_boolean_byte_other_than_0_or_1_reads_as_fastavro_reads_it(byte):
    encoder = codec("Position")
    rng = random.Random(8)
    records = [fix(i, rng) for i in range(5)]
    records[2].update(acc_on=False, direction_deg=None)
    values = [encoder.encode(r) for r in records]
    # acc_on's value byte follows its branch index, after the fields before it.
    first = {"type": "record", "name": "P", "fields": encoder.schema["fields"][:6]}
    prefix = io.BytesIO()
    fastavro.schemaless_writer(prefix, fastavro.parse_schema(first), records[2])
    at = 10 + len(prefix.getvalue()) + 1
    assert values[2][at - 1 : at + 1] == b"\x02\x00"
    values[2] = values[2][:at] + byte + values[2][at + 1 :]
    alone = io.BytesIO(values[2])
    alone.seek(10)
    read = fastavro.schemaless_reader(alone, encoder.schema, None)

    decoded = decoder().decode(values)

    assert decoded.failed == []
    assert decoded.frame["acc_on"].to_list()[2] == read["acc_on"]
    assert rows_of(decoded.frame)[:2] == expected_rows(records[:2])


def test_instants_beyond_year_9999_read_alike_in_a_block_and_one_by_one():
    encoder = codec("Position")
    rng = random.Random(6)
    records = [fix(i, rng) for i in range(4)]
    plain = plain_position()
    far = 10**15  # in year 33658
    extreme = {
        **records[1],
        "gps_time": far,
        "received_at": -62_000_000_000_000,  # 1 BC
    }
    values = [encoder.encode(records[0]), encode_as(plain, extreme)]
    corrupt = encoder.encode(records[2])[:-2]

    as_block = decoder().decode(values)
    one_by_one = decoder().decode([*values, corrupt])

    assert as_block.failed == []
    assert [i for i, _ in one_by_one.failed] == [2]
    for decoded in (as_block, one_by_one):
        times = decoded.frame.select(
            pl.col("gps_time", "received_at").dt.epoch("ms")
        ).rows()
        assert times[1] == (far, -62_000_000_000_000)
        assert decoded.frame[INDEX].to_list() == [0, 1]


def test_older_writer_schemas_and_bad_headers_in_one_batch():
    current = load_schema_file(POSITION_SCHEMA)
    older = json.loads(POSITION_SCHEMA.read_text())
    older["fields"] = [f for f in older["fields"] if f["name"] != "odometer_m"]
    older = fastavro.parse_schema(older)
    old_header = MAGIC + schema_fingerprint(older)
    position_codec = Codec(
        "Position", {schema_fingerprint(older): older}, current=current
    )

    def encode_old(record: dict) -> bytes:
        buf = io.BytesIO()
        buf.write(old_header)
        fastavro.schemaless_writer(buf, older, record)
        return buf.getvalue()

    rng = random.Random(3)
    records = [fix(i, rng) for i in range(6)]
    values = [
        position_codec.encode(records[0]),
        encode_old(records[1]),
        None,
        position_codec.encode(records[3]),
        b"\xc3\x01" + b"\x00" * 8 + b"body",
        b"{}",
    ]

    decoded = decoder(position_codec).decode(values)

    assert decoded.frame[INDEX].to_list() == [0, 1, 3]
    # The older schema had no odometer: the current schema's default fills it.
    resolved = {**records[1], "odometer_m": None}
    assert rows_of(decoded.frame) == expected_rows([records[0], resolved, records[3]])
    reasons = dict(decoded.failed)
    assert sorted(reasons) == [2, 4, 5]
    assert reasons[2] == "empty value"
    assert "unknown writer schema fingerprint" in reasons[4]
    assert "not an Avro single-object message" in reasons[5]


def test_record_types_with_nested_fields_are_read_one_by_one():
    lbs = codec("LbsReading")
    kind = next(s for s in SINKS if s.kind == "lbs")
    frame_decoder = FrameDecoder(lbs, kind.source_fields())
    assert not frame_decoder.columnar
    record = {f["name"]: f.get("default") for f in lbs.schema["fields"]}
    record.update(
        imei="860000000000011",
        reading_time=BASE,
        mcc=639,
        mnc=2,
        lac=1,
        cell_id=2**40,
        cells=[{"lac": 1, "cell_id": 2**40, "signal": None}],
        source="push",
        origin="/pushlbs",
        received_at=BASE,
    )
    decoded = frame_decoder.decode([lbs.encode(record)])
    assert decoded.failed == []
    assert decoded.frame.select(kind.projection()).row(0) == tuple(
        record.get(c) for c in kind.columns
    )


async def test_copy_encoder_writes_every_column_type(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE t (a text, b integer, c bigint, d smallint, e double "
            "precision, f real, g boolean, h timestamptz, i timestamp, j date, "
            "k jsonb, l varchar(8))"
        )
        row = (
            "ñ\u200b",
            -(2**31),
            2**62,
            -32768,
            1e-300,
            1.5,
            False,
            BASE,
            datetime(1999, 12, 31, 23, 59, 59, 999999),
            datetime(2026, 3, 2).date(),
            '{"a": [1, "two"]}',
            "12345678",
        )
        names = list("abcdefghijkl")
        frame = pl.DataFrame(
            [row, (None,) * len(row)], schema=names, orient="row", strict=False
        )
        types = dict(
            await conn.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 't'::regclass AND attnum > 0"
            )
        )
        encoder = CopyEncoder({n: types[n] for n in names})
        await conn.copy_to_table(
            "t",
            source=memoryview(encoder.encode(frame)),
            columns=names,
            format="binary",
        )
        stored = [tuple(r) for r in await conn.fetch("SELECT * FROM t ORDER BY a")]
    finally:
        await conn.close()
    expected = list(row)
    expected[10] = json.dumps(json.loads(row[10]))
    assert stored == [tuple(expected), (None,) * len(row)]


def test_a_value_its_column_cannot_hold_is_a_row_error():
    encoder = CopyEncoder({"n": "integer"})
    with pytest.raises(ROW_ERRORS):
        encoder.encode(pl.DataFrame({"n": [1, 2**40]}))


def test_unsupported_column_types_are_refused_at_start():
    with pytest.raises(Exception, match="numeric"):
        CopyEncoder({"n": "numeric(10,2)"})


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param({"detail": "{not json"}, "json", id="invalid json"),
        pytest.param({"detail": "[" * 200_000}, "stack depth", id="json too deep"),
        pytest.param(
            # Random letters: a repeated one would compress to fit the index.
            {"event_type": "".join(random.Random(1).choices("abcdefgh", k=9000))},
            "index row",
            id="key too long",
        ),
        pytest.param({"detail": '{"a": "\\u0000"}'}, "\\u0000", id="json nul"),
        pytest.param({"imei": "8600\x0000000011"}, "0x00", id="text nul"),
    ],
)
async def test_writer_isolates_rows_postgresql_refuses(database_url, bad, reason):
    kind = next(s for s in SINKS if s.kind == "event")
    records = [
        {
            "imei": "860000000000011",
            "event_type": "ignition",
            "event_time": BASE + timedelta(minutes=i),
            "detail": json.dumps({"i": i}),
            "source": "push",
            "origin": "/pushevent",
            "received_at": BASE,
            INDEX: 100 + i,
        }
        for i in range(5)
    ]
    records[2].update(bad)
    writer = BatchWriter(kind)
    conn = await asyncpg.connect(database_url)
    try:
        await writer.prepare(conn)
        changed, rejected = await writer.write(conn, pl.DataFrame(records))
        details = await conn.fetch(
            "SELECT detail->>'i' FROM tracksolid.device_events ORDER BY event_time"
        )
    finally:
        await conn.close()
    assert changed == {"tracksolid.device_events": 4}
    assert [r.index for r in rejected] == [102]
    assert reason in rejected[0].reason.lower()
    # PostgreSQL's DETAIL and HINT lines are kept, on the reason's one line.
    assert "\n" not in rejected[0].reason
    assert [r[0] for r in details] == ["0", "1", "3", "4"]


def test_timestamps_beyond_postgresql_are_a_row_error_not_a_panic():
    encoder = CopyEncoder({"t": "timestamp with time zone"})
    for millis in (2**62, -(2**62), 9_223_372_036_854_776, -210_866_803_200_001):
        frame = pl.DataFrame({"t": [0, millis]}).select(
            pl.col("t").cast(pl.Datetime("ms", "UTC"))
        )
        with pytest.raises(ROW_ERRORS, match="range"):
            encoder.encode(frame)


async def test_the_extreme_storable_timestamps_round_trip(database_url):
    lowest, highest = -210_866_803_200_000, 9_223_372_036_854_775
    frame = pl.DataFrame({"t": [lowest, highest, None]}).select(
        pl.col("t").cast(pl.Datetime("ms", "UTC"))
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE ts (t timestamptz)")
        encoder = CopyEncoder({"t": "timestamp with time zone"})
        await conn.copy_to_table(
            "ts", source=memoryview(encoder.encode(frame)), format="binary"
        )
        stored = await conn.fetch(
            "SELECT (extract(epoch FROM t) * 1000)::bigint FROM ts ORDER BY t"
        )
    finally:
        await conn.close()
    assert [r[0] for r in stored] == [lowest, highest, None]


async def test_writer_rejects_only_the_row_with_an_impossible_time(database_url):
    rng = random.Random(5)
    records = [fix(i, rng) for i in range(8)]
    for record in records:
        record["lat"], record["lng"] = -1.3, 36.8
        record["direction_deg"] = record["satellites"] = None
    frame = with_impossible_time(positions_frame(records), at=5)
    writer = BatchWriter(POSITION)
    conn = await asyncpg.connect(database_url)
    try:
        await writer.prepare(conn)
        changed, rejected = await writer.write(conn, frame)
        stored = await conn.fetchval("SELECT count(*) FROM tracksolid.position_history")
    finally:
        await conn.close()
    assert [r.index for r in rejected] == [5]
    assert "range" in rejected[0].reason
    assert stored == 7
    assert changed["tracksolid.position_history"] == 7


async def test_writer_sends_data_encoded_ahead_only_by_its_own_encoder(database_url):
    rng = random.Random(11)
    records = [fix(i % 3, rng) for i in range(9)]
    for n, record in enumerate(records):
        record["gps_time"] = BASE + timedelta(minutes=n)
        record["direction_deg"] = record["satellites"] = None
    frame = positions_frame(records)
    # The same keys with other coordinates, encoded by another connection's writer.
    other = frame.with_columns(pl.lit(0.5).alias("lat"), pl.lit(0.25).alias("lng"))
    writer, stranger = BatchWriter(POSITION), BatchWriter(POSITION)
    assert writer.encode_ahead(frame) == {}
    conn = await asyncpg.connect(database_url)
    try:
        await writer.prepare(conn)
        await stranger.prepare(conn)
        ahead = writer.encode_ahead(frame)
        live = ahead["tracksolid.live_positions"].rows
        assert sorted(live["gps_time"].to_list()) == [
            BASE + timedelta(minutes=n) for n in (6, 7, 8)
        ]
        await writer.write(conn, frame, ahead=stranger.encode_ahead(other))
        stored = await conn.fetch(
            "SELECT imei, gps_time, lat, lng FROM tracksolid.position_history"
        )
        newest = await conn.fetch(
            "SELECT imei, gps_time, lat FROM tracksolid.live_positions"
        )
        await conn.execute("TRUNCATE tracksolid.position_history")
        await conn.execute("TRUNCATE tracksolid.live_positions")
        changed, rejected = await writer.write(conn, frame, ahead=ahead)
        again = await conn.fetch(
            "SELECT imei, gps_time, lat, lng FROM tracksolid.position_history"
        )
    finally:
        await conn.close()
    expected = sorted((r["imei"], r["gps_time"], r["lat"], r["lng"]) for r in records)
    assert sorted(tuple(r) for r in stored) == expected
    assert sorted(tuple(r) for r in again) == expected
    assert sorted(tuple(r) for r in newest) == sorted(
        (r["imei"], r["gps_time"], r["lat"]) for r in records[6:]
    )
    assert changed == {
        "tracksolid.position_history": 9,
        "tracksolid.live_positions": 3,
    }
    assert rejected == []


async def test_rows_that_cannot_be_encoded_ahead_are_isolated_by_the_write(
    database_url,
):
    rng = random.Random(5)
    records = [fix(i, rng) for i in range(6)]
    for record in records:
        record["direction_deg"] = record["satellites"] = None
    frame = with_impossible_time(positions_frame(records), at=2)
    writer = BatchWriter(POSITION)
    conn = await asyncpg.connect(database_url)
    try:
        await writer.prepare(conn)
        ahead = writer.encode_ahead(frame)
        changed, rejected = await writer.write(conn, frame, ahead=ahead)
    finally:
        await conn.close()
    assert ahead == {}
    assert [r.index for r in rejected] == [2]
    assert changed["tracksolid.position_history"] == 5

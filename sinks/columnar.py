"""Turn a batch of clean-topic messages into columns, and columns into COPY data.

A sink spends most of its time outside PostgreSQL on two conversions: Avro
messages into Python values, and Python values into PostgreSQL's binary COPY
format. Both run here on whole batches in compiled code instead of once per
record and field:

- ``FrameDecoder`` strips the single-object headers, joins the bodies into one
  Avro object-container block and reads it with polars into a DataFrame;
- ``CopyEncoder`` casts a DataFrame to the target columns' types and encodes
  it with pgpq into a binary ``COPY`` payload.

A container block has no per-record boundaries, so a corrupt body could shift
every record after it, and polars reads some bytes that fastavro refuses. The
decoder therefore proves each record of a block from its decoded values: the
bytes its canonical encoding takes equal its message's, every "int" fits in 32
bits, every union branch index is the byte fastavro reads as null or as the
value, and every boolean is the byte 0 or 1. One failed proof sends the batch
through fastavro record by record, which isolates the bad message; so both
ways of reading keep and refuse the same records. Messages written with an
older schema take that path too, since schema resolution needs fastavro, as do
record types with nested fields (arrays, records), whose sizes are not
recomputed.

polars marks its Avro reader unstable; the version is pinned and the tests
compare it with fastavro record by record. A reader panic on bad bytes prints
Rust's panic message on stderr before the batch falls back.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pgpq
import polars as pl
import pyarrow as pa
from fastavro import parse_schema, schemaless_reader
from fastavro.write import Writer
from pgpq import encoders as pg_encoders
from pgpq import schema as pg_schema

from fleetstream.codec import HEADER_LEN, MAGIC, Codec, zigzag_long
from fleetstream.errors import ConfigError, ContractError

logger = logging.getLogger(__name__)

INDEX = "_fs_index"

PRIMITIVE_DTYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int32(),
    "long": pl.Int64(),
    "double": pl.Float64(),
    "float": pl.Float32(),
    "boolean": pl.Boolean(),
    "bytes": pl.Binary(),
}
LOGICAL_DTYPES: dict[str, pl.DataType] = {
    "timestamp-millis": pl.Datetime("ms", "UTC"),
    "timestamp-micros": pl.Datetime("us", "UTC"),
}
# Bytes a value of fixed width takes in Avro's binary encoding.
FIXED_WIDTH = {"double": 8, "float": 4, "boolean": 1}
# A union branch index is a zigzag varint: one byte for any two-branch union.
UNION_INDEX_BYTES = 1


def _field_type(avro_type: Any) -> tuple[str, str | None, bool] | None:
    """Return ``(primitive, logical type, nullable)``, or None for nested types."""
    nullable = False
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1 or len(avro_type) != 2 or avro_type[0] != "null":
            return None
        nullable, avro_type = True, branches[0]
    logical = None
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        avro_type = avro_type.get("type")
    if not isinstance(avro_type, str) or avro_type not in PRIMITIVE_DTYPES:
        return None
    if logical is not None and logical not in LOGICAL_DTYPES:
        return None
    return avro_type, logical, nullable


def _dtype(primitive: str, logical: str | None) -> pl.DataType:
    return LOGICAL_DTYPES[logical] if logical else PRIMITIVE_DTYPES[primitive]


def _varint_len(value: pl.Expr) -> pl.Expr:
    """Bytes of the zigzag varint of an Int64 expression (1 to 10)."""
    # The zigzag code of x is 2x for x >= 0 and -2x - 1 below, as unsigned;
    # the varint holds its significant bits 7 to a byte, at least one byte.
    negative = value < 0
    magnitude = pl.when(negative).then(-(value + 1)).otherwise(value)
    code = magnitude.cast(pl.UInt64) * 2 + negative.cast(pl.UInt64)
    bits = 64 - code.bitwise_leading_zeros().cast(pl.Int64)
    return pl.max_horizontal((bits + 6) // 7, pl.lit(1, pl.Int64))


def _length_varint_len(length: pl.Expr) -> pl.Expr:
    """Bytes of the varint of a non-negative length below 2^31 (1 to 5)."""
    # Its zigzag code 2n needs another byte at each n >= 2^(7k - 1).
    size = pl.lit(1, pl.Int64)
    for k in range(1, 5):
        size = size + (length >= 2 ** (7 * k - 1)).cast(pl.Int64)
    return size


def _field_sizes(
    fields: dict[str, tuple[str, str | None, bool]],
) -> list[tuple[str, pl.Expr]]:
    """Bytes each field's canonical Avro encoding takes, per row, in order.

    A nullable field's size counts its union branch index; a null value
    computes as null and is counted as that index alone.
    """
    sizes = []
    for name, (primitive, _, nullable) in fields.items():
        column = pl.col(name)
        if primitive in FIXED_WIDTH:
            size = pl.lit(FIXED_WIDTH[primitive], pl.Int64)
        elif primitive in ("string", "bytes"):
            length = (
                column.str.len_bytes() if primitive == "string" else column.bin.size()
            ).cast(pl.Int64)
            size = _length_varint_len(length) + length
        else:  # int, long, and the timestamps they carry
            size = _varint_len(column.cast(pl.Int64))
        if nullable:
            size = pl.when(column.is_null()).then(0).otherwise(size) + UNION_INDEX_BYTES
        sizes.append((name, size))
    return sizes


def _container_header(schema: dict[str, Any], sync: bytes) -> bytes:
    """Return an Avro object-container header for ``schema``, no codec.

    Defaults and docs do not change how data is read, and polars' Avro reader
    refuses some string defaults, so the header leaves them out. It also says
    "long" where the schema says "int": both are the same varint, and polars
    would wrap an "int" beyond 32 bits where fastavro reads it whole, so the
    decoder reads 64 bits and checks the range itself.
    """

    def bare(node: Any) -> Any:
        if node == "int":
            return "long"
        if isinstance(node, dict):
            return {
                k: bare(v)
                for k, v in node.items()
                if k not in ("default", "doc") and not k.startswith("__")
            }
        if isinstance(node, list):
            return [bare(v) for v in node]
        return node

    buf = io.BytesIO()
    Writer(buf, parse_schema(bare(schema)), codec="null", sync_marker=sync).flush()
    return buf.getvalue()


@dataclass
class Decoded:
    """A batch's usable records as columns, and the rest with their reasons.

    ``frame`` holds the requested fields plus ``INDEX``, each row's position in
    the batch, in batch order; ``failed`` pairs positions with reasons.
    """

    frame: pl.DataFrame
    failed: list[tuple[int, str]]


def _plain(schema: Any) -> Any:
    """Return ``schema`` without logical types: timestamps read as longs."""
    if isinstance(schema, dict):
        return {
            k: _plain(v)
            for k, v in schema.items()
            if k != "logicalType" and not k.startswith("__")
        }
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# A nullable field's union branch index byte: zigzag 0 (null) or 1 (value).
NULL_BRANCH, VALUE_BRANCH = 0, 2
LENGTH, START, ENDS = "_fs_length", "_fs_start", "_fs_field_starts"


class FrameDecoder:
    """Decode batches of one record type's messages into a DataFrame.

    ``fields`` are the record fields to keep; each must be a primitive, a
    nullable primitive, or a timestamp. Both ways of reading agree on every
    message: a record is kept only if fastavro would read it from exactly its
    own bytes, with every value in its type's range.
    """

    def __init__(self, codec: Codec, fields: Sequence[str]) -> None:
        self.codec = codec
        types = {f["name"]: _field_type(f["type"]) for f in codec.schema["fields"]}
        for name in fields:
            if name not in types:
                raise ConfigError(f"{codec.name} has no field {name!r}")
            if types[name] is None:
                raise ConfigError(
                    f"{codec.name}.{name} is nested; a sink column needs a primitive"
                )
        self.fields = list(fields)
        self.schema = {
            name: _dtype(*types[name][:2])  # type: ignore[misc]
            for name in self.fields
        }
        self.fingerprint = codec.header[2:]
        # Record by record, timestamps are read as the longs they are, so that
        # both ways of reading keep any instant PostgreSQL can store (Python's
        # datetime stops at year 9999).
        self._reader = parse_schema(_plain(codec.schema))
        self._writers = {
            fingerprint: (
                None if fingerprint == self.fingerprint else parse_schema(_plain(w))
            )
            for fingerprint, w in codec.writers.items()
        }
        self._timestamps = {
            name: dtype
            for name, dtype in self.schema.items()
            if isinstance(dtype, pl.Datetime)
        }
        self._plain_schema = {
            name: pl.Int64() if name in self._timestamps else dtype
            for name, dtype in self.schema.items()
        }
        # Whole batches are read as one block only when every field's size can
        # be recomputed, which proves each record was read from its own bytes.
        self.columnar = all(t is not None for t in types.values())
        if self.columnar:
            self._sync = os.urandom(16)
            self._header = _container_header(codec.schema, self._sync)
            self._checks = self._block_checks(types)  # type: ignore[arg-type]

    def _block_checks(
        self, types: dict[str, tuple[str, str | None, bool]]
    ) -> tuple[list[pl.Expr], list[pl.Expr], list[tuple[str, int, pl.Expr]]]:
        """Return the checks a block's frame must pass, per row.

        The recomputed size of each record must equal its message's; every
        "int" must fit in 32 bits; every union branch index must be the byte
        that fastavro reads as null or as the value, at the offset where the
        record's earlier fields end, and every boolean's byte its 0 or 1.
        Returned as the per-field sizes (computed first, as columns), the range
        checks, and the bytes to check: the size column of the field where the
        byte is, how far into the field, and the byte expected there.
        """
        sizes = [
            size.alias(f"_fs_size_{k}")
            for k, (_, size) in enumerate(_field_sizes(types))
        ]
        ranges = [
            pl.col(name).is_between(INT32_MIN, INT32_MAX) | pl.col(name).is_null()
            for name, (primitive, _, _) in types.items()
            if primitive == "int"
        ]
        bytes_at = []
        for k, (name, (primitive, _, nullable)) in enumerate(types.items()):
            if nullable:
                expected = (
                    pl.when(pl.col(name).is_null())
                    .then(NULL_BRANCH)
                    .otherwise(VALUE_BRANCH)
                    .cast(pl.UInt8)
                )
                bytes_at.append((f"_fs_size_{k}", 0, expected))
            if primitive == "boolean":
                # fastavro reads any byte but 0 as true, polars only 1: a
                # boolean's byte must be the 0 or 1 it was read as (no byte
                # to check when null).
                expected = pl.col(name).cast(pl.UInt8)
                bytes_at.append((f"_fs_size_{k}", int(nullable), expected))
        return sizes, ranges, bytes_at

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        current: list[int] = []
        other: list[int] = []
        failed: list[tuple[int, str]] = []
        header = MAGIC + self.fingerprint
        for i, value in enumerate(values):
            if value is None:
                failed.append((i, "empty value"))
            elif value.startswith(header):
                current.append(i)
            else:
                other.append(i)
        frames = []
        if current and self.columnar:
            frame = self._read_block(values, current)
            if frame is None:
                other.extend(current)
            else:
                frames.append(frame)
        elif current:
            other.extend(current)
        if other:
            other.sort()
            frames.append(self._read_each(values, other, failed))
        failed.sort()
        if not frames:
            return Decoded(self._empty(), failed)
        frame = frames[0] if len(frames) == 1 else pl.concat(frames).sort(INDEX)
        return Decoded(frame, failed)

    def _empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema={**self.schema, INDEX: pl.Int64})

    def _read_block(
        self, values: Sequence[bytes | None], positions: list[int]
    ) -> pl.DataFrame | None:
        """Read the messages at ``positions`` as one block; None if unproven."""
        bodies = [values[i][HEADER_LEN:] for i in positions]  # type: ignore[index]
        data = b"".join(bodies)
        block = b"".join(
            (
                self._header,
                zigzag_long(len(bodies)),
                zigzag_long(len(data)),
                data,
                self._sync,
            )
        )
        try:
            frame = pl.read_avro(io.BytesIO(block))
        except (KeyboardInterrupt, SystemExit):
            raise
        # Bad bytes can make the reader panic, which reaches Python as an
        # exception outside the Exception hierarchy; any failure means the
        # records are read one by one, which tells the bad ones apart.
        except BaseException as exc:  # noqa: BLE001
            logger.info(
                "%s: batch of %d not readable as one block (%s); reading each",
                self.codec.name,
                len(bodies),
                type(exc).__name__,
            )
            return None
        if frame.height != len(bodies) or not self._proven(frame, bodies, data):
            logger.info(
                "%s: batch of %d not proven read from each record's own bytes; "
                "reading each",
                self.codec.name,
                len(bodies),
            )
            return None
        return frame.select(
            *(pl.col(name).cast(self.schema[name]) for name in self.fields),
            pl.Series(INDEX, positions, dtype=pl.Int64),
        )

    def _proven(self, frame: pl.DataFrame, bodies: list[bytes], data: bytes) -> bool:
        sizes, ranges, bytes_at = self._checks
        lengths = pl.Series(LENGTH, [len(b) for b in bodies], dtype=pl.Int64)
        # The batch's bytes as a column of octets, without a copy.
        octets = pl.from_arrow(
            pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])
        )
        names = [size.meta.output_name() for size in sizes]
        # Where each field starts: the record's start plus its earlier fields,
        # computed once as columns (a struct field read in each check below
        # would be summed again for each).
        starts = [f"_fs_start_{k}" for k in range(len(names))]
        measured = (
            frame.with_columns(
                *sizes, lengths, (lengths.cum_sum() - lengths).alias(START)
            )
            .with_columns(
                pl.cum_sum_horizontal(pl.col(START), *names[:-1])
                .struct.rename_fields(starts)
                .alias(ENDS)
            )
            .unnest(ENDS)
        )
        start_of = dict(zip(names, starts, strict=True))
        checks = [pl.sum_horizontal(names) == pl.col(LENGTH), *ranges]
        checks.extend(
            (
                pl.lit(octets).gather(pl.col(start_of[size]) + skip) == expected
            ).fill_null(True)
            for size, skip, expected in bytes_at
        )
        return measured.select(pl.all_horizontal(checks).all()).item()

    def _read_each(
        self,
        values: Sequence[bytes | None],
        positions: list[int],
        failed: list[tuple[int, str]],
    ) -> pl.DataFrame:
        records = []
        kept = []
        for i in positions:
            # Bad bytes make the Avro reader fail in many ways; whatever it
            # raises, the record is unusable here.
            try:
                records.append(self._read_one(values[i]))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001
                failed.append(
                    (i, one_line(f"undecodable: {type(exc).__name__}: {exc}"))
                )
                continue
            kept.append(i)
        try:
            return self._frame(records, kept)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
            pass
        # fastavro reads a varint of any length, so an "int" can come back
        # beyond 32 bits: find the records whose values their types cannot hold.
        frames = []
        for i, record in zip(kept, records, strict=True):
            try:
                frames.append(self._frame([record], [i]))
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
                failed.append((i, "undecodable: a value beyond its Avro type"))
        return pl.concat(frames) if frames else self._empty()

    def _read_one(self, value: bytes) -> dict[str, Any]:
        """Read one message with fastavro, which must use every byte of it."""
        name = self.codec.name
        if len(value) < HEADER_LEN or value[:2] != MAGIC:
            raise ContractError(f"{name}: not an Avro single-object message")
        fingerprint = value[2:HEADER_LEN]
        if fingerprint not in self._writers:
            raise ContractError(
                f"{name}: unknown writer schema fingerprint {fingerprint.hex()}"
            )
        writer = self._writers[fingerprint]
        buf = io.BytesIO(value)
        buf.seek(HEADER_LEN)
        if writer is None:
            record = schemaless_reader(buf, self._reader, None)
        else:
            record = schemaless_reader(buf, writer, self._reader)
        left = len(value) - buf.tell()
        if left:
            raise ContractError(f"{name}: {left} bytes after the record")
        return record

    def _frame(self, records: list[dict[str, Any]], positions: list[int]):
        columns = {name: [r.get(name) for r in records] for name in self.fields}
        columns[INDEX] = positions
        frame = pl.DataFrame(columns, schema={**self._plain_schema, INDEX: pl.Int64})
        if not self._timestamps:
            return frame
        return frame.with_columns(
            pl.col(name).cast(dtype) for name, dtype in self._timestamps.items()
        )


def one_line(text: str) -> str:
    """Return ``text`` on one line: database errors carry DETAIL and HINT lines."""
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


# PostgreSQL column types a sink writes, as the polars type cast to before
# encoding and, where pgpq's inference does not give it, the COPY output type.
PG_TYPES: dict[str, tuple[pl.DataType, Any]] = {
    "text": (pl.String(), None),
    "character varying": (pl.String(), None),
    "integer": (pl.Int32(), None),
    "bigint": (pl.Int64(), None),
    "smallint": (pl.Int16(), None),
    "double precision": (pl.Float64(), None),
    "real": (pl.Float32(), None),
    "boolean": (pl.Boolean(), None),
    "timestamp with time zone": (pl.Datetime("us", "UTC"), None),
    "timestamp without time zone": (pl.Datetime("us"), None),
    "date": (pl.Date(), None),
    "jsonb": (pl.String(), pg_schema.Jsonb),
}


def _pg_type_name(declared: str) -> str:
    # format_type adds a modifier: character varying(32), timestamp(3) with...
    base = declared.split("(", 1)[0].strip()
    if "(" in declared and ")" in declared:
        base = (base + " " + declared.split(")", 1)[1].strip()).strip()
    return base


# The first microsecond PostgreSQL's timestamps hold, in Unix microseconds
# (4714-11-24 BC); their last lies beyond what 64 bits of Unix microseconds hold.
PG_TIMESTAMP_MIN_US = -210_866_803_200_000_000
I64_MAX = 2**63 - 1
PER_MICROSECOND = {"ms": 1000, "us": 1, "ns": 1 / 1000}


class OutOfRange(ValueError):
    """A batch holds a value that its column's type cannot hold."""


def _timestamp_bounds(unit: str) -> tuple[int, int]:
    """Return the lowest and highest storable timestamps in ``unit``."""
    scale = PER_MICROSECOND[unit]
    return -int(-PG_TIMESTAMP_MIN_US // scale), int(I64_MAX // scale)


class CopyEncoder:
    """Encode DataFrames into PostgreSQL binary ``COPY`` data for fixed columns.

    ``types`` maps each column to its type as ``format_type`` prints it.
    Casting is strict: a value the column cannot hold (an int4 overflow, a
    timestamp beyond PostgreSQL's range) raises, so that the writer can
    isolate its row. Timestamps are checked before they are cast, since
    polars fails on those out of range with a panic rather than an error.
    """

    def __init__(self, types: Mapping[str, str]) -> None:
        self.columns = list(types)
        self.casts = []
        self._outputs: dict[str, Any] = {}
        for column, declared in types.items():
            name = _pg_type_name(declared)
            if name not in PG_TYPES:
                raise ConfigError(
                    f"column {column} has type {declared}, which the sinks do not "
                    "write",
                    hint="use text, integer, bigint, smallint, double precision, "
                    "real, boolean, date, timestamp or jsonb",
                )
            dtype, output = PG_TYPES[name]
            self.casts.append(pl.col(column).cast(dtype, strict=True))
            if output is not None:
                self._outputs[column] = output

    def encode(self, frame: pl.DataFrame) -> bytes:
        self._check_timestamps(frame)
        table = frame.select(self.casts).to_arrow()
        encoders = {}
        for field in table.schema:
            if field.name in self._outputs:
                encoders[field.name] = (
                    pg_encoders.LargeStringEncoderBuilder.new_with_output(
                        field, self._outputs[field.name]()
                    )
                )
            else:
                encoders[field.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(
                    field
                )
        encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(
            table.schema, encoders
        )
        parts = [encoder.write_header()]
        parts.extend(encoder.write_batch(batch) for batch in table.to_batches())
        parts.append(encoder.finish())
        return b"".join(parts)

    def _check_timestamps(self, frame: pl.DataFrame) -> None:
        checks = []
        for column in self.columns:
            dtype = frame.schema.get(column)
            if isinstance(dtype, pl.Datetime):
                low, high = _timestamp_bounds(dtype.time_unit)
                value = pl.col(column).cast(pl.Int64)
                checks.append(((value < low) | (value > high)).any().alias(column))
        if not checks:
            return
        found = frame.select(checks).row(0, named=True)
        beyond = [column for column, out in found.items() if out]
        if beyond:
            raise OutOfRange(f"timestamps beyond PostgreSQL's range in {beyond}")

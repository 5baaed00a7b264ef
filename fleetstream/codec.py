"""Avro encoding of every topic's messages.

Messages use Avro single-object encoding: two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the
binary body. A reader can therefore tell which schema wrote a message without a
registry, and decode old messages with the current schema (schema resolution).

Schemas live in ``schemas/*.avsc`` at the repository root; ``schemas/history``
keeps released versions that may still be on a topic.

Encoding is on every processor's hot path, and fastavro spends most of a small
record's time dispatching on the schema for each field. For schemas made only of
primitive fields and ``null`` unions (every contract but ``LbsReading``), the
codec builds one writer per field once, and a record whose values are all of
the plain Python types those fields expect is written by them. Any other value
(a datetime for a timestamp, a bool where an int is due, a missing field, an int
out of range) is handed to fastavro unchanged, so the bytes written and the
errors raised are fastavro's; the tests hold both paths to identical bytes.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from fleetstream.errors import ContractError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Zig-zag varints of the small integers that most int fields carry.
SMALL_INTS = range(-(2**13), 2**13)

FieldWriter = Callable[[Any], bytes]
WriterFactory = Callable[[bytes | None, bytes], FieldWriter]


def load_schema_file(path: Path) -> dict[str, Any]:
    # Keeping fastavro's "parsed" marker lets every encode and decode skip
    # parsing the schema again, which halves their cost.
    return parse_schema(json.loads(path.read_text()))


def schema_fingerprint(parsed: dict[str, Any]) -> bytes:
    digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return bytes.fromhex(digest)[::-1]


class NotPlain(Exception):
    """A value the field writers leave to fastavro."""


# A record the field writers cannot write whole (a missing field, an unexpected
# type, text that is not UTF-8) goes to fastavro, which writes it or refuses it.
LEFT_TO_FASTAVRO = (
    NotPlain,
    KeyError,
    TypeError,
    OverflowError,
    UnicodeError,
    struct.error,
)


def zigzag_long(n: int) -> bytes:
    """Avro's binary encoding of a long: a zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


SMALL_VARINTS = {n: zigzag_long(n) for n in SMALL_INTS}
PACK_DOUBLE = struct.Struct("<d").pack


def _integer_writer(bounds: tuple[int, int]) -> WriterFactory:
    low, high = bounds

    def factory(null: bytes | None, tag: bytes) -> FieldWriter:
        def write(value: Any, small=SMALL_VARINTS) -> bytes:
            if value is None and null is not None:
                return null
            if value.__class__ is not int or not low <= value <= high:
                raise NotPlain
            return tag + (small.get(value) or zigzag_long(value))

        return write

    return factory


def _double_writer(null: bytes | None, tag: bytes) -> FieldWriter:
    def write(value: Any, pack=PACK_DOUBLE) -> bytes:
        if value is None and null is not None:
            return null
        cls = value.__class__
        if cls is not float and cls is not int:
            raise NotPlain
        return tag + pack(value)

    return write


def _boolean_writer(null: bytes | None, tag: bytes) -> FieldWriter:
    true, false = tag + b"\x01", tag + b"\x00"

    def write(value: Any) -> bytes:
        if value is True:
            return true
        if value is False:
            return false
        if value is None and null is not None:
            return null
        raise NotPlain

    return write


def _text_writer(cls: type) -> WriterFactory:
    as_bytes = cls is str

    def factory(null: bytes | None, tag: bytes) -> FieldWriter:
        def write(value: Any, small=SMALL_VARINTS) -> bytes:
            if value is None and null is not None:
                return null
            if value.__class__ is not cls:
                raise NotPlain
            data = value.encode() if as_bytes else value
            return tag + (small.get(len(data)) or zigzag_long(len(data))) + data

        return write

    return factory


def _timestamp_millis_writer(null: bytes | None, tag: bytes) -> FieldWriter:
    as_long = _integer_writer(LONG_RANGE)(null, tag)

    def write(value: Any, epoch=EPOCH) -> bytes:
        # An aware datetime becomes milliseconds as fastavro computes them; a
        # naive one fastavro reads in the machine's zone, so it goes there.
        if value.__class__ is datetime and value.tzinfo is not None:
            delta = value - epoch
            value = (delta.days * 86400 + delta.seconds) * 1000 + int(
                delta.microseconds / 1000
            )
        return as_long(value)

    return write


# Each factory takes the union tag of null (None when the field is required)
# and the tag written before a value, and returns the field's writer.
WRITER_FACTORIES: dict[str, WriterFactory] = {
    "int": _integer_writer(INT_RANGE),
    "long": _integer_writer(LONG_RANGE),
    "double": _double_writer,
    "boolean": _boolean_writer,
    "string": _text_writer(str),
    "bytes": _text_writer(bytes),
}


def _factory(schema: Any) -> WriterFactory | None:
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        if logical == "timestamp-millis" and schema.get("type") == "long":
            return _timestamp_millis_writer
        if logical is not None:
            return None
        schema = schema.get("type")
    return WRITER_FACTORIES.get(schema) if isinstance(schema, str) else None


def _field_writer(kind: Any) -> FieldWriter | None:
    if not isinstance(kind, list):
        factory = _factory(kind)
        return None if factory is None else factory(None, b"")
    if len(kind) != 2 or "null" not in kind:
        return None
    null_at = kind.index("null")
    factory = _factory(kind[1 - null_at])
    if factory is None:
        return None
    return factory(SMALL_VARINTS[null_at], SMALL_VARINTS[1 - null_at])


def field_writers(schema: dict[str, Any]) -> list[tuple[str, FieldWriter]] | None:
    """Return a writer per field of a flat record schema, or None when not flat."""
    writers = []
    for field in schema["fields"]:
        write = _field_writer(field["type"])
        if write is None:
            return None
        writers.append((field["name"], write))
    return writers


class Codec:
    """Encode and decode one record type with its current schema."""

    def __init__(self, name: str, writers: dict[bytes, dict[str, Any]], current):
        self.name = name
        self.schema = current
        self.header = MAGIC + schema_fingerprint(current)
        # The current schema itself, not an equal copy from history: fastavro
        # then sees writer and reader are one and skips comparing them per call.
        self._writers = {**writers, self.header[2:]: current}
        self._fields = field_writers(current)

    @property
    def writers(self) -> dict[bytes, dict[str, Any]]:
        """The writer schemas this codec decodes, by fingerprint."""
        return dict(self._writers)

    def encode(self, record: dict[str, Any]) -> bytes:
        if self._fields is not None:
            try:
                parts = [self.header]
                for name, write in self._fields:
                    parts.append(write(record[name]))
                return b"".join(parts)
            except LEFT_TO_FASTAVRO:
                pass
        return self.encode_with_fastavro(record)

    def encode_with_fastavro(self, record: dict[str, Any]) -> bytes:
        """Encode with fastavro alone: the reference the field writers match."""
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise ContractError(f"{self.name}: not an Avro single-object message")
        writer = self._writers.get(data[2:HEADER_LEN])
        if writer is None:
            raise ContractError(
                f"{self.name}: unknown writer schema fingerprint "
                f"{data[2:HEADER_LEN].hex()}",
                hint="add the writer's schema to schemas/history",
            )
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        return fastavro.schemaless_reader(buf, writer, self.schema)


@cache
def codec(name: str) -> Codec:
    """Return the codec of record type ``name`` (the .avsc file stem)."""
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.exists():
        raise ContractError(f"no schema named {name!r} in {SCHEMA_DIR}")
    current = load_schema_file(path)
    writers = {schema_fingerprint(current): current}
    history = SCHEMA_DIR / "history"
    for old in sorted(history.glob(f"{name}.v*.avsc")) if history.exists() else ():
        parsed = load_schema_file(old)
        writers[schema_fingerprint(parsed)] = parsed
    return Codec(name, writers, current)

"""Avro encoding of every topic's messages.

Messages use Avro single-object encoding: two marker bytes ``C3 01``, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the
binary body. A reader can therefore tell which schema wrote a message without a
registry, and decode old messages with the current schema (schema resolution).

Schemas live in ``schemas/*.avsc`` at the repository root; ``schemas/history``
keeps released versions that may still be on a topic.
"""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from fleetstream.errors import ContractError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = 10


def load_schema_file(path: Path) -> dict[str, Any]:
    # Keeping fastavro's "parsed" marker lets every encode and decode skip
    # parsing the schema again, which halves their cost.
    return parse_schema(json.loads(path.read_text()))


def schema_fingerprint(parsed: dict[str, Any]) -> bytes:
    digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return bytes.fromhex(digest)[::-1]


class Codec:
    """Encode and decode one record type with its current schema."""

    def __init__(self, name: str, writers: dict[bytes, dict[str, Any]], current):
        self.name = name
        self.schema = current
        self.header = MAGIC + schema_fingerprint(current)
        # The current schema itself, not an equal copy from history: fastavro
        # then sees writer and reader are one and skips comparing them per call.
        self._writers = {**writers, self.header[2:]: current}

    def encode(self, record: dict[str, Any]) -> bytes:
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

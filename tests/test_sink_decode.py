"""The sink's record decoder gives exactly what the codec gives, for every sink."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import fastavro
import pytest

from fleetstream.codec import MAGIC, SCHEMA_DIR, codec, load_schema_file
from fleetstream.codec import schema_fingerprint as fingerprint
from fleetstream.errors import ContractError
from sinks.kinds import SINKS
from sinks.sink import RecordDecoder

MOMENT = datetime(2026, 3, 2, 7, 8, 9, 123000, tzinfo=UTC)


def value_of(kind, filled: bool, n: int):
    """Return a value of Avro type ``kind``; nulls in unions unless ``filled``."""
    if isinstance(kind, list):
        if not filled and "null" in kind:
            return None
        return value_of(next(k for k in kind if k != "null"), filled, n)
    if isinstance(kind, dict):
        if kind.get("logicalType") == "timestamp-millis":
            return MOMENT
        if kind["type"] == "enum":
            return kind["symbols"][n % len(kind["symbols"])]
        if kind["type"] == "array":
            return [value_of(kind["items"], filled, n)]
        if kind["type"] == "map":
            return {"k": value_of(kind["values"], filled, n)}
        if kind["type"] == "record":
            return sample(kind, filled)
        return value_of(kind["type"], filled, n)
    return {
        "string": f"s{n}",
        "long": 1_700_000_000_000 + n,
        "int": n,
        "double": n + 0.25,
        "float": n + 0.5,
        "boolean": bool(n % 2),
        "bytes": bytes([n]),
    }[kind]


def sample(schema: dict, filled: bool) -> dict:
    return {
        f["name"]: value_of(f["type"], filled, n)
        for n, f in enumerate(schema["fields"])
    }


@pytest.mark.parametrize("sink", SINKS, ids=lambda s: s.kind)
@pytest.mark.parametrize("filled", [True, False], ids=["filled", "nulls"])
def test_current_writer_decodes_like_the_codec(sink, filled):
    topic_codec = codec(sink.schema)
    record = sample(topic_codec.schema, filled)
    data = topic_codec.encode(record)
    decoded = RecordDecoder(topic_codec)(data)
    assert decoded == topic_codec.decode(data)
    for name, value in decoded.items():
        if isinstance(value, datetime):
            assert value == MOMENT and value.tzinfo is UTC, name


@pytest.mark.parametrize("sink", SINKS, ids=lambda s: s.kind)
def test_older_writers_go_through_the_codec(sink):
    topic_codec = codec(sink.schema)
    history = sorted((SCHEMA_DIR / "history").glob(f"{sink.schema}.v*.avsc"))
    for path in history:
        old = load_schema_file(path)
        buf = io.BytesIO()
        buf.write(MAGIC + fingerprint(old))
        fastavro.schemaless_writer(buf, old, sample(old, True))
        data = buf.getvalue()
        assert RecordDecoder(topic_codec)(data) == topic_codec.decode(data)


def test_foreign_and_broken_messages_fail_like_the_codec():
    topic_codec = codec("Position")
    decoder = RecordDecoder(topic_codec)
    with pytest.raises(ContractError, match="not an Avro single-object"):
        decoder(b"{}")
    with pytest.raises(ContractError, match="unknown writer schema"):
        decoder(MAGIC + bytes(8) + b"\x00")
    truncated = topic_codec.encode(sample(topic_codec.schema, True))[:20]
    with pytest.raises(EOFError):
        decoder(truncated)

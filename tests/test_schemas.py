"""Topic contracts: every schema documented, every change readable by old data."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import parse_schema
from fastavro.utils import generate_many

from fleetstream.codec import MAGIC, SCHEMA_DIR, codec, schema_fingerprint
from fleetstream.topics import ALL_TOPICS, CLEAN, RAW_KIND_BY_ORIGIN, RAW_TOPICS

HISTORY = SCHEMA_DIR / "history"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.avsc"))
HISTORY_FILES = sorted(HISTORY.glob("*.v*.avsc"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def records(schema: dict):
    """Yield every record definition in a schema, nested ones included."""
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for field in schema["fields"]:
                yield from records(field["type"])
        elif schema.get("type") == "array":
            yield from records(schema["items"])
    elif isinstance(schema, list):
        for branch in schema:
            yield from records(branch)


def evolution_problems(old: dict, new: dict, samples: int = 50) -> list[str]:
    """Return why data written with ``old`` cannot be read with ``new``.

    Rules: a field added since ``old`` needs a default; every record ``old``
    can write must resolve against ``new`` (Avro schema resolution).
    """
    problems = []
    old_fields = {f["name"] for f in old["fields"]}
    for field in new["fields"]:
        names = {field["name"], *field.get("aliases", ())}
        if not names & old_fields and "default" not in field:
            problems.append(f"{new['name']}.{field['name']} added without a default")
    writer = parse_schema(copy.deepcopy(old))
    reader = parse_schema(copy.deepcopy(new))
    for record in generate_many(writer, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, writer, reader)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            problems.append(f"{new['name']}: {type(exc).__name__}: {exc}")
            break
    return problems


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_every_record_and_field_is_documented(path):
    schema = load(path)
    assert schema["name"] == path.stem
    for record in records(schema):
        assert record.get("doc", "").strip(), f"{record['name']} has no doc"
        undocumented = [f["name"] for f in record["fields"] if not f.get("doc")]
        assert undocumented == [], f"{record['name']} fields without doc"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_optional_fields_default_to_null(path):
    for record in records(load(path)):
        for field in record["fields"]:
            if isinstance(field["type"], list) and field["type"][0] == "null":
                assert field.get("default", "missing") is None, field["name"]


@pytest.mark.parametrize("path", HISTORY_FILES, ids=lambda p: p.name)
def test_current_schema_reads_every_released_version(path):
    name = path.name.split(".")[0]
    current = load(SCHEMA_DIR / f"{name}.avsc")
    assert evolution_problems(load(path), current) == []


@pytest.mark.parametrize("path", HISTORY_FILES, ids=lambda p: p.name)
def test_codec_decodes_messages_of_released_versions(path):
    name = path.name.split(".")[0]
    old = parse_schema(load(path))
    record = next(iter(generate_many(old, 1)))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old, record)
    message = MAGIC + schema_fingerprint(old) + buf.getvalue()
    decoded = codec(name).decode(message)
    assert set(decoded) == {
        f["name"] for f in load(SCHEMA_DIR / f"{name}.avsc")["fields"]
    }


def test_every_clean_contract_has_a_released_version():
    released = {p.name.split(".")[0] for p in HISTORY_FILES}
    mine = {spec.schema for spec in ALL_TOPICS if spec.layer == CLEAN} - {
        "Trip",
        "MileageDaily",
    }
    assert mine - released == set()


def test_every_topic_names_an_existing_schema():
    for spec in ALL_TOPICS:
        assert (SCHEMA_DIR / f"{spec.schema}.avsc").exists(), spec.schema
        codec(spec.schema)


def test_every_raw_kind_of_an_origin_is_declared():
    kinds = {spec.kind for spec in RAW_TOPICS}
    assert set(RAW_KIND_BY_ORIGIN.values()) <= kinds


# The checker itself must catch incompatible changes.

BASE = {
    "type": "record",
    "name": "Probe",
    "doc": "probe",
    "fields": [
        {"name": "imei", "type": "string", "doc": "id"},
        {"name": "speed", "type": ["null", "double"], "default": None, "doc": "s"},
    ],
}


def changed(**field) -> dict:
    schema = copy.deepcopy(BASE)
    schema["fields"].append(field)
    return schema


def test_adding_an_optional_field_with_a_default_is_compatible():
    new = changed(name="acc", type=["null", "boolean"], default=None, doc="a")
    assert evolution_problems(BASE, new) == []


def test_adding_a_field_without_default_is_incompatible():
    problems = evolution_problems(BASE, changed(name="acc", type="boolean", doc="a"))
    assert any("acc added without a default" in p for p in problems)


def test_changing_a_field_type_is_incompatible():
    new = copy.deepcopy(BASE)
    new["fields"][0]["type"] = "long"
    assert evolution_problems(BASE, new) != []


def test_promoting_int_to_long_is_compatible():
    old = changed(name="n", type="int", doc="n")
    new = changed(name="n", type="long", doc="n")
    assert evolution_problems(old, new) == []


def test_renaming_with_an_alias_is_compatible():
    new = copy.deepcopy(BASE)
    new["fields"][1] = {**new["fields"][1], "name": "speed_kmh", "aliases": ["speed"]}
    assert evolution_problems(BASE, new) == []

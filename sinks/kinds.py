"""What each sink writes: one declaration per clean topic.

A sink reads one clean topic and writes every record into one or more tables.
Adding a kind is a declaration here, not new code: the topic's schema, the
columns taken from each record, and for each table its natural key and rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from fleetstream.settings import Settings
from fleetstream.topics import CLEAN, spec


@dataclass(frozen=True)
class Append:
    """Insert rows whose key is new; the first row stored for a key stays."""


@dataclass(frozen=True)
class Newest:
    """Keep one row per key, replaced only by a row strictly newer in ``order_by``."""

    order_by: str


@dataclass(frozen=True)
class Target:
    """One table a sink writes, with its natural key and write rule."""

    table: str
    key: tuple[str, ...]
    rule: Append | Newest = Append()


@dataclass(frozen=True)
class SinkSpec:
    """One clean topic and the tables its records go to.

    ``columns`` are the table columns written, in order; each is read from the
    record field of the same name unless ``fields`` names another. Columns left
    out are never written, which is how operator-owned columns stay untouched.
    """

    kind: str
    columns: tuple[str, ...]
    targets: tuple[Target, ...]
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return spec(CLEAN, self.kind).schema

    def topic(self, settings: Settings) -> str:
        return settings.topic(CLEAN, self.kind)

    def group_id(self, settings: Settings) -> str:
        return f"{settings.topic_prefix}.sink.{self.kind}"

    def row_getter(self) -> Callable[[dict[str, Any]], tuple]:
        """Return a function that turns a decoded record into a row tuple."""
        names = [self.fields.get(column, column) for column in self.columns]
        if len(names) == 1:
            only = names[0]
            return lambda record: (record[only],)
        return itemgetter(*names)


POSITION_COLUMNS = (
    "imei",
    "gps_time",
    "lat",
    "lng",
    "speed_kmh",
    "direction_deg",
    "acc_on",
    "pos_type",
    "satellites",
    "altitude_m",
    "reupload",
    "odometer_m",
    "source",
    "origin",
    "received_at",
)

POSITION = SinkSpec(
    kind="position",
    columns=POSITION_COLUMNS,
    targets=(
        Target("tracksolid.position_history", ("imei", "gps_time")),
        Target("tracksolid.live_positions", ("imei",), Newest("gps_time")),
    ),
)

# cost_centre and city are the operator's: they are not listed, so never written.
DEVICE = SinkSpec(
    kind="device",
    columns=(
        "imei",
        "device_name",
        "vehicle_number",
        "vehicle_number_norm",
        "vehicle_name",
        "vehicle_model",
        "vehicle_icon",
        "device_model",
        "sim",
        "vin",
        "driver_name",
        "driver_phone",
        "device_group",
        "enabled",
        "expires_at",
        "activated_at",
        "account",
        "updated_at",
    ),
    fields={"updated_at": "received_at"},
    targets=(Target("tracksolid.devices", ("imei",), Newest("updated_at")),),
)

SINKS: tuple[SinkSpec, ...] = (POSITION, DEVICE)


def sink_spec(kind: str) -> SinkSpec:
    """Return the declared sink of a clean topic kind."""
    for declared in SINKS:
        if declared.kind == kind:
            return declared
    raise KeyError(f"no sink is declared for clean topic kind {kind!r}")

"""What each sink writes: one declaration per clean topic.

A sink reads one clean topic and writes every record into one or more tables.
Adding a kind is a declaration here, not new code: the topic's schema, the
columns taken from each record, and for each table its natural key and rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

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
    record field of the same name unless ``fields`` names another field or gives
    a polars expression over the record's fields (for a unit or vocabulary the
    table keeps apart); sinks decode whole batches into columns.
    Columns left out are never written, which is how operator-owned columns stay
    untouched; record fields with no column are not stored.
    """

    kind: str
    columns: tuple[str, ...]
    targets: tuple[Target, ...]
    fields: dict[str, str | pl.Expr] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return spec(CLEAN, self.kind).schema

    def topic(self, settings: Settings) -> str:
        return settings.topic(CLEAN, self.kind)

    def group_id(self, settings: Settings) -> str:
        return f"{settings.topic_prefix}.sink.{self.kind}"

    def projection(self) -> list[pl.Expr]:
        """Return one expression per column, over the record's fields."""
        exprs = []
        for column in self.columns:
            source = self.fields.get(column, column)
            expr = pl.col(source) if isinstance(source, str) else source
            exprs.append(expr.alias(column))
        return exprs

    def source_fields(self) -> list[str]:
        """Return the record fields the columns are computed from."""
        names: dict[str, None] = {}
        for expr in self.projection():
            names.update(dict.fromkeys(expr.meta.root_names()))
        return list(names)


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
# The table has no received_at; updated_at holds it and decides which row is
# newer, so a row an operator inserts by hand (updated_at defaults to now())
# only yields to registry data received after it.
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

# Facts of one device at one time, written once; provenance columns shared.
PROVENANCE = ("source", "origin", "received_at")


def _fact(
    kind: str, table: str, key: tuple[str, ...], *columns: str, **fields: str
) -> SinkSpec:
    """Declare an append-only sink of one table: key, columns, provenance."""
    return SinkSpec(
        kind=kind,
        columns=(*key, *columns, *PROVENANCE),
        targets=(Target(table, key),),
        fields=fields,
    )


HEARTBEAT = _fact(
    "heartbeat",
    "tracksolid.heartbeats",
    ("imei", "heartbeat_time"),
    "acc_on",
    "power_level",
    "gsm_signal",
    "voltage_v",
)
ALARM = _fact(
    "alarm",
    "tracksolid.alarms",
    ("imei", "alarm_type", "alarm_time"),
    "alarm_name",
    "lat",
    "lng",
    "speed_kmh",
)
EVENT = _fact(
    "event",
    "tracksolid.device_events",
    ("imei", "event_type", "event_time"),
    "detail",
)
LBS = _fact(
    "lbs",
    "tracksolid.lbs_readings",
    ("imei", "reading_time"),
    "mcc",
    "mnc",
    "lac",
    "cell_id",
    "signal",
)
OBD = _fact(
    "obd",
    "tracksolid.obd_readings",
    ("imei", "reading_time"),
    "rpm",
    "speed_kmh",
    "coolant_c",
    "fuel_level_pct",
    "battery_v",
    "extra",
)
FAULT = _fact(
    "fault",
    "tracksolid.fault_codes",
    ("imei", "fault_code", "reported_at"),
    "description",
)
TEMPERATURE = _fact(
    "temperature",
    "tracksolid.temperature_readings",
    ("imei", "sensor", "reading_time"),
    "temperature_c",
    "humidity_pct",
)
FUEL = _fact(
    "fuel",
    "tracksolid.fuel_readings",
    ("imei", "reading_time"),
    "fuel_level_pct",
    "fuel_litres",
)

# A platform report may be re-sent with the period's end filled in: the copy
# received last replaces the earlier one.
PARKING = SinkSpec(
    kind="parking",
    columns=(
        "imei",
        "kind",
        "start_time",
        "end_time",
        "lat",
        "lng",
        "duration_s",
        "address",
        *PROVENANCE,
    ),
    targets=(
        Target(
            "tracksolid.parking_events",
            ("imei", "kind", "start_time"),
            Newest("received_at"),
        ),
    ),
)

# Trips are re-emitted under the same trip_id as late fixes arrive; the latest
# computation wins. The table names fleetstream's own trips 'stream' where the
# topic says 'derived', and keeps kilometres where the topic carries metres.
TRIP_SOURCES = {"derived": "stream"}
TRIP = SinkSpec(
    kind="trip",
    columns=(
        "trip_id",
        "imei",
        "start_time",
        "end_time",
        "start_lat",
        "start_lng",
        "end_lat",
        "end_lng",
        "distance_km",
        "duration_s",
        "max_speed_kmh",
        "avg_speed_kmh",
        "driver_name",
        "vehicle_number",
        "source",
        "distance_source",
        "updated_at",
    ),
    fields={
        "distance_km": pl.col("distance_m") / 1000,
        "source": pl.col("source").replace(TRIP_SOURCES),
        "updated_at": "computed_at",
    },
    targets=(Target("tracksolid.trips", ("trip_id",), Newest("updated_at")),),
)

# mileage_daily has no sink: the database derives daily distance from
# position_history itself (tracksolid.v_mileage_daily).
SINKS: tuple[SinkSpec, ...] = (
    POSITION,
    DEVICE,
    HEARTBEAT,
    ALARM,
    EVENT,
    LBS,
    OBD,
    FAULT,
    TEMPERATURE,
    FUEL,
    PARKING,
    TRIP,
)


def sink_spec(kind: str) -> SinkSpec:
    """Return the declared sink of a clean topic kind."""
    for declared in SINKS:
        if declared.kind == kind:
            return declared
    raise KeyError(f"no sink is declared for clean topic kind {kind!r}")

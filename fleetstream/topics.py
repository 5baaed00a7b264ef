"""The whole topic topology in one place.

Names follow ``<prefix>.<layer>.<kind>``: ``raw`` topics carry the platform's
records unchanged inside a ``RawEvent`` envelope, ``clean`` topics carry typed
records, and ``deadletter`` carries anything a stage could not use. Every
message is keyed by the device IMEI (UTF-8), so each device's events keep their
order within one partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetstream.settings import Settings

RAW = "raw"
CLEAN = "clean"
DEADLETTER = "deadletter"

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    """Declaration of one topic: contract, key, retention and who uses it."""

    layer: str
    kind: str
    schema: str
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    key: str = "imei"
    retention_ms: int = -1
    compacted: bool = False
    doc: str = ""
    configs: dict[str, str] = field(default_factory=dict)

    def name(self, settings: Settings) -> str:
        return settings.topic(self.layer, self.kind)

    def topic_configs(self) -> dict[str, str]:
        configs = {"retention.ms": str(self.retention_ms)}
        if self.compacted:
            configs["cleanup.policy"] = "compact"
        configs.update(self.configs)
        return configs


def _raw(kind: str, doc: str) -> TopicSpec:
    return TopicSpec(
        RAW, kind, "RawEvent", ("poll", "webhook", "backfill"), ("process",), doc=doc
    )


def _clean(
    kind: str,
    schema: str,
    doc: str,
    writers: tuple[str, ...] = ("process",),
    readers: tuple[str, ...] = ("sink",),
    **kw,
) -> TopicSpec:
    return TopicSpec(CLEAN, kind, schema, writers, readers, doc=doc, **kw)


# Raw topics keep every event forever: they are the replay source for backfills.
RAW_TOPICS: tuple[TopicSpec, ...] = (
    _raw("position", "GPS/LBS fixes: location.list/get, track.list, /pushgps"),
    _raw("heartbeat", "device heartbeats: /pushhb"),
    _raw("alarm", "alarms: alarm.list, /pushalarm, jimi.push.device.alarm"),
    _raw("device", "device registry rows: user.device.list"),
    _raw("trip", "platform trip reports: track.mileage, /pushtripreport"),
    _raw("parking", "parking/idling reports: report.parking"),
    _raw("event", "login/logout events: /pushevent"),
    _raw("lbs", "cell and Wi-Fi positioning records: /pushlbs"),
    _raw("obd", "OBD readings: /pushobd, obd.list"),
    _raw("fault", "OBD fault codes: /pushfaultinfo, obd.fault"),
    _raw("temperature", "temperature and humidity: /pushtem"),
    _raw("fuel", "fuel sensor readings: /pushoil"),
    _raw("other", "push paths and messages with no known kind, kept verbatim"),
)

CLEAN_TOPICS: tuple[TopicSpec, ...] = (
    _clean(
        "position",
        "Position",
        "validated fixes, one per (imei, gps_time)",
        readers=("sink", "derive"),
    ),
    _clean("heartbeat", "Heartbeat", "signs of life without a new fix"),
    _clean("alarm", "Alarm", "alarms, one per (imei, alarm_type, alarm_time)"),
    _clean("event", "DeviceEvent", "device status events: LOGIN, LOGOUT"),
    _clean("lbs", "LbsReading", "cell and Wi-Fi observations, never fixes"),
    _clean("obd", "ObdReading", "OBD engine readings"),
    _clean("fault", "FaultCode", "OBD diagnostic trouble codes"),
    _clean("temperature", "TemperatureReading", "temperature and humidity"),
    _clean("fuel", "FuelReading", "fuel sensor readings"),
    _clean("parking", "ParkingEvent", "parking and idling periods from the platform"),
    _clean(
        "device",
        "Device",
        "latest registry data per device",
        readers=("sink", "derive"),
        compacted=True,
    ),
)

DEADLETTER_TOPIC = TopicSpec(
    DEADLETTER,
    "all",
    "DeadLetter",
    ("process", "sink"),
    ("operator",),
    key="origin key",
    doc="records a stage could not use, with their origin and the reason",
)

STATE = "state"

# Facts derived in the stream by processors.derived, and its private state log.
DERIVED_TOPICS: tuple[TopicSpec, ...] = (
    _clean(
        "trip",
        "Trip",
        "trips: derived from fixes (source derived) and platform reports (platform)",
        writers=("process", "derive"),
    ),
    _clean(
        "mileage_daily",
        "MileageDaily",
        "distance per device per local day, latest total per key",
        writers=("derive",),
        readers=(),
        key="imei|day",
        compacted=True,
    ),
    TopicSpec(
        STATE,
        "derived",
        "DerivedState",
        ("derive",),
        ("derive",),
        compacted=True,
        doc="accepted fixes and device snapshots that processors.derived recovers",
    ),
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    RAW_TOPICS + CLEAN_TOPICS + (DEADLETTER_TOPIC,) + DERIVED_TOPICS
)

# Push path (without the leading slash) or Open API method -> raw topic kind.
RAW_KIND_BY_ORIGIN: dict[str, str] = {
    "jimi.user.device.location.list": "position",
    "jimi.device.location.get": "position",
    "jimi.device.track.list": "position",
    "pushgps": "position",
    "pushhb": "heartbeat",
    "jimi.device.alarm.list": "alarm",
    "pushalarm": "alarm",
    "jimi.push.device.alarm": "alarm",
    "jimi.user.device.list": "device",
    "jimi.device.track.mileage": "trip",
    "pushtripreport": "trip",
    "jimi.open.platform.report.parking": "parking",
    "pushevent": "event",
    "pushlbs": "lbs",
    "pushobd": "obd",
    "jimi.device.obd.list": "obd",
    "pushfaultinfo": "fault",
    "jimi.device.obd.fault": "fault",
    "pushtem": "temperature",
    "pushoil": "fuel",
}


def raw_kind(origin: str) -> str:
    """Return the raw topic kind for a push path or API method; unknown -> other."""
    return RAW_KIND_BY_ORIGIN.get(origin.strip("/"), "other")


def spec(layer: str, kind: str) -> TopicSpec:
    """Return the declared topic for a layer and kind."""
    for topic in ALL_TOPICS:
        if topic.layer == layer and topic.kind == kind:
            return topic
    raise KeyError(f"no {layer!r} topic of kind {kind!r} is declared")

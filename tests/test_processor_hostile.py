"""Hostile raw records: foreign digits, out-of-range numbers, unknown origins, repeats.

Each record goes through the processor's router, so what is asserted is what
would reach the clean or dead-letter topic.
"""

from __future__ import annotations

import json
import logging
import tracemalloc

import pytest

from fleetstream.codec import codec
from processors.dedupe import RecentFixes
from processors.routing import Router

RECEIVED_AT = 1741590000000  # 2025-03-10T07:00:00Z
IMEI = "860001000000011"
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
FIX = {"gpsTime": "2025-03-10 06:00:00", "lat": -1.2631, "lng": 36.80465}


def raw(origin: str, payload: dict | str, imei=IMEI, received=RECEIVED_AT) -> bytes:
    return codec("RawEvent").encode(
        {
            "source": "push",
            "origin": origin,
            "received_at": received,
            "imei": imei,
            "payload": payload if isinstance(payload, str) else json.dumps(payload),
            "request_id": None,
        }
    )


class Feed:
    def __init__(self, make_settings, **overrides) -> None:
        self.settings = make_settings(**overrides)
        self.router = Router(self.settings)
        self.offset = 0

    def __call__(self, kind: str, value: bytes) -> tuple[str, dict | None]:
        """Route one record; return the topic layer.kind and the decoded record."""
        self.offset += 1
        topic = self.settings.topic("raw", kind)
        out = self.router.route(topic, 0, self.offset, IMEI.encode(), value)
        if out is None:
            return "dropped", None
        layer_kind = out.topic.split(".", 1)[1]
        schema = "DeadLetter" if layer_kind == "deadletter.all" else None
        return layer_kind, codec(schema).decode(out.value) if schema else None


@pytest.mark.parametrize("table", [ARABIC_INDIC, FULL_WIDTH], ids=["arabic", "wide"])
@pytest.mark.parametrize("where", ["payload", "deviceImei", "envelope"])
def test_imei_of_non_ascii_digits_is_rejected(make_settings, table, where):
    feed = Feed(make_settings)
    foreign = IMEI.translate(table)
    assert foreign.isdigit()  # what the old check accepted
    payload = dict(FIX)
    if where == "payload":
        payload["imei"] = foreign
    elif where == "deviceImei":
        payload["deviceImei"] = foreign
    topic, letter = feed("position", raw("pushgps", payload, imei=foreign))
    assert topic == "deadletter.all"
    assert "IMEI is not 15 ASCII digits" in letter["reason"]


@pytest.mark.parametrize(
    "imei", ["86000100000001", "8600010000000111", " 860001000000011\n", "8600-1"]
)
def test_imei_is_exactly_fifteen_ascii_digits(make_settings, imei):
    feed = Feed(make_settings)
    topic, letter = feed("position", raw("pushgps", {**FIX, "imei": imei}))
    if imei.strip() == IMEI:
        assert topic == "clean.position"  # surrounding blanks are trimmed
    else:
        assert topic == "deadletter.all"
        assert "IMEI is not 15 ASCII digits" in letter["reason"]


# (raw kind, origin, payload fields, field named in the reason)
NON_ASCII_NUMBERS = [
    ("position", "pushgps", {"lat": "-١.٢"}, "lat"),
    ("position", "pushgps", {"gpsSpeed": "٣٠"}, "speed"),
    ("position", "pushgps", {"satelliteNum": "１２"}, "satellites"),
    ("position", "pushgps", {"altitude": "1_000"}, "altitude"),
    ("position", "pushgps", {"gpsTime": "١٧٤١٥٨٦٤٠٠"}, "gpsTime"),
    (
        "heartbeat",
        "pushhb",
        {"gateTime": "2025-03-10 06:00:00", "powerLevel": "٥"},
        "powerLevel",
    ),
    (
        "lbs",
        "pushlbs",
        {
            "gateTime": "2025-03-10 06:00:00",
            "lbsJson": '{"mcc": "٦٣٩", "cellList": "1,2,3"}',
        },
        "mcc",
    ),
    (
        "lbs",
        "pushlbs",
        {"gateTime": "2025-03-10 06:00:00", "lbsJson": '{"cellList": "١,2,3"}'},
        "cellList LAC",
    ),
    (
        "obd",
        "pushobd",
        {"gateTime": "2025-03-10 06:00:00", "currentRPM": "٩٠٠"},
        "currentRPM",
    ),
]


@pytest.mark.parametrize("kind,origin,fields,field", NON_ASCII_NUMBERS)
def test_numbers_of_non_ascii_digits_are_rejected(
    make_settings, kind, origin, fields, field
):
    feed = Feed(make_settings)
    payload = {**FIX, "imei": IMEI, **fields}
    topic, letter = feed(kind, raw(origin, payload))
    assert topic == "deadletter.all"
    assert letter["reason"].startswith(f"{field} is not a "), letter["reason"]


BIG = "1" + "0" * 400
OUT_OF_RANGE = [
    ("position", "pushgps", {"satelliteNum": 2**40}, "satellites", "-2147483648"),
    ("position", "pushgps", {"gpsSpeed": "1e400"}, "speed", "1e+15"),
    ("position", "pushgps", {"gpsSpeed": BIG}, "speed", "1e+15"),
    ("position", "pushgps", {"direction": -(2**62)}, "direction", "1e+15"),
    ("position", "pushgps", {"altitude": 1e300}, "altitude", "1e+15"),
    ("position", "pushgps", {"gpsTime": 10**20}, "gpsTime", "1e+15"),
    ("position", "pushgps", {"gpsTime": 10**14}, "gpsTime", "1900..2199"),
    (
        "position",
        "pushgps",
        {"gpsTime": "9999-12-31T23:00:00-05:00"},
        "gpsTime",
        "1900..2199",
    ),
    (
        "heartbeat",
        "pushhb",
        {"gateTime": "2025-03-10 06:00:00", "gsmSign": 2**31},
        "gsmSign",
        "2147483647",
    ),
    (
        "obd",
        "pushobd",
        {"gateTime": "2025-03-10 06:00:00", "currentRPM": 1e12},
        "currentRPM",
        "2147483647",
    ),
    (
        "temperature",
        "pushtem",
        {"gateTime": "2025-03-10 06:00:00", "sensor": -(2**33)},
        "sensor",
        "-2147483648",
    ),
    (
        "parking",
        "jimi.open.platform.report.parking",
        {"acc": "off", "startTime": "2025-03-10T05:00:00Z", "durSecond": 2**63},
        "durSecond",
        "1e+15",
    ),
    (
        "lbs",
        "pushlbs",
        {
            "gateTime": "2025-03-10 06:00:00",
            "lbsJson": json.dumps({"mnc": 2**32, "cellList": "1,2"}),
        },
        "mnc",
        "2147483647",
    ),
    (
        "alarm",
        "pushalarm",
        {
            "type": "DEVICE",
            "msg": json.dumps(
                {
                    "alertType": "1",
                    "alarmTime": "2025-03-10 06:00:00",
                    "gpsSpeed": 10**400,
                }
            ),
        },
        "msg",
        "not JSON",
    ),
    (
        "device",
        "jimi.user.device.list",
        {"activationTime": -(10**13)},
        "activationTime",
        "1900..2199",
    ),
]


@pytest.mark.parametrize("kind,origin,fields,field,allowed", OUT_OF_RANGE)
def test_out_of_range_numbers_are_plain_rejections(
    make_settings, caplog, kind, origin, fields, field, allowed
):
    feed = Feed(make_settings)
    payload = {**FIX, "imei": IMEI, **fields}
    caplog.set_level(logging.DEBUG, logger="processors")
    topic, letter = feed(kind, raw(origin, json.dumps(payload)))
    assert topic == "deadletter.all"
    reason = letter["reason"]
    assert reason.startswith(field) and allowed in reason, reason
    assert "unexpected" not in reason and len(reason) < 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_in_range_extremes_still_pass(make_settings):
    feed = Feed(make_settings)
    payload = {**FIX, "imei": IMEI, "satelliteNum": 2**31 - 1, "altitude": -1e15}
    topic, _ = feed("position", raw("pushgps", payload))
    assert topic == "clean.position"


def test_records_of_unknown_origins_are_dead_lettered_with_their_bytes(make_settings):
    feed = Feed(make_settings)
    value = raw("pushgpss", {**FIX, "imei": IMEI})
    topic, letter = feed("other", value)
    assert topic == "deadletter.all"
    assert letter["reason"] == "no cleaner for origin pushgpss"
    assert letter["value"] == value
    assert letter["origin_topic"] == feed.settings.topic("raw", "other")
    assert feed.router.no_cleaner == 1
    assert feed.router.counts == {"deadletter": 1}
    assert feed.settings.topic("raw", "other") in feed.router.raw_topics


def track_polls(start_ms: int, polls: int, step_s: int, settings) -> list[list[int]]:
    """Return the fix times each track poll re-sends, as the poller asks for them."""
    interval = int(settings.poll_tracks_interval_seconds * 1000)
    overlap = int(settings.poll_tracks_overlap_seconds * 1000)
    windows = []
    for n in range(1, polls + 1):
        end = start_ms + n * interval
        begin = max(start_ms, end - interval - overlap)
        first = begin + (-begin) % (step_s * 1000)
        windows.append(list(range(first, end, step_s * 1000)))
    return windows


def test_track_poll_overlap_repeats_are_dropped(make_settings):
    feed = Feed(make_settings)
    settings = feed.settings
    start = RECEIVED_AT - 6 * 3600 * 1000
    seen = set()
    clean = 0
    for window in track_polls(start, polls=8, step_s=10, settings=settings):
        for ms in window:
            seen.add(ms)
            payload = {**FIX, "imei": IMEI, "gpsTime": ms}
            topic, _ = feed("position", raw("jimi.device.track.list", payload))
            clean += topic == "clean.position"
    sent = feed.router.counts["position"] + feed.router.counts["duplicate"]
    assert sent > 2 * len(seen)  # the windows do overlap heavily
    assert clean == len(seen)  # no repeat within the horizon reaches the topic
    horizon_fixes = settings.process_dedupe_horizon_seconds / 10 + 1
    assert feed.router.recent.held(IMEI) <= horizon_fixes


def test_fixes_older_than_the_horizon_pass_and_memory_stays_bounded():
    memory = RecentFixes(devices=10, per_device=5, horizon_ms=1000)
    assert [memory.seen("a", t) for t in (0, 500, 1000, 500)] == [
        False,
        False,
        False,
        True,
    ]
    memory.seen("a", 2000)  # 0 and 500 fall out of the horizon
    assert memory.held("a") == 2
    assert memory.seen("a", 500) is False  # older than the horizon: not known
    assert memory.held("a") == 2  # and not remembered
    for t in range(2001, 2010):
        memory.seen("a", t)
    assert memory.held("a") == 5  # the count bound holds inside the horizon


def test_memory_per_device_over_the_default_horizon(make_settings):
    settings = make_settings()
    horizon = int(settings.process_dedupe_horizon_seconds * 1000)
    memory = RecentFixes(1000, settings.process_dedupe_fixes_per_device, horizon)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for device in range(1000):
        imei = f"{860000000000000 + device}"
        for ms in range(0, horizon + 1, 10_000):
            memory.seen(imei, ms)
    per_device = (tracemalloc.get_traced_memory()[0] - before) / 1000
    tracemalloc.stop()
    assert memory.held("860000000000000") == horizon // 10_000 + 1
    # 8 bytes a fix plus the array, the key and the ordered-dict slot.
    assert per_device < 10_000, per_device

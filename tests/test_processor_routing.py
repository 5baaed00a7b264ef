"""Routing raw records: duplicates, late fixes, heartbeats and dead letters."""

from __future__ import annotations

import json

from fleetstream.codec import codec
from processors.dedupe import RecentFixes
from processors.routing import Message, Router

RECEIVED_AT = 1741590000000  # 2025-03-10T07:00:00Z
IMEI = "860001000000011"


def raw(origin: str, payload: dict, source: str = "poll", imei=IMEI) -> bytes:
    return codec("RawEvent").encode(
        {
            "source": source,
            "origin": origin,
            "received_at": RECEIVED_AT,
            "imei": imei,
            "payload": json.dumps(payload),
            "request_id": None,
        }
    )


def point(gps_time: str, **extra) -> dict:
    return {"imei": IMEI, "gpsTime": gps_time, "lat": -1.2631, "lng": 36.80465, **extra}


class Feed:
    """Route records through one router, numbering offsets like a partition."""

    def __init__(self, make_settings, **overrides) -> None:
        self.settings = make_settings(**overrides)
        self.router = Router(self.settings)
        self.offset = 0

    def __call__(self, kind: str, value: bytes, key: bytes = IMEI.encode()):
        self.offset += 1
        topic = self.settings.topic("raw", kind)
        return self.router.route(topic, 0, self.offset, key, value)


def test_same_fix_from_poll_push_and_backfill_is_one_fact(make_settings):
    feed = Feed(make_settings)
    first = feed(
        "position", raw("jimi.device.track.list", point("2025-03-10 05:00:00"))
    )
    again = [
        feed("position", raw("pushgps", point("2025-03-10 05:00:00"), "push")),
        feed(
            "position",
            raw("jimi.device.track.list", point("2025-03-10 05:00:00"), "backfill"),
        ),
    ]
    assert first.topic == feed.settings.topic("clean", "position")
    assert first.key == IMEI.encode()
    assert again == [None, None]
    assert feed.router.counts == {"position": 1, "duplicate": 2}


def test_repeated_location_snapshot_is_a_heartbeat(make_settings):
    feed = Feed(make_settings)
    snapshot = point("2025-03-10 05:00:00", hbTime="2025-03-10 05:00:30")
    newer_heartbeat = {**snapshot, "hbTime": "2025-03-10 05:01:30", "accStatus": "0"}
    first = feed("position", raw("jimi.user.device.location.list", snapshot))
    second = feed("position", raw("jimi.user.device.location.list", newer_heartbeat))
    assert first.topic.endswith(".clean.position")
    assert second.topic.endswith(".clean.heartbeat")
    heartbeat = codec("Heartbeat").decode(second.value)
    assert heartbeat["heartbeat_time"].isoformat() == "2025-03-10T05:01:30+00:00"
    assert heartbeat["acc_on"] is False


def test_late_fixes_pass_through_with_their_own_time(make_settings):
    feed = Feed(make_settings)
    times = ["2025-03-10 05:10:00", "2025-03-10 05:00:00", "2025-03-10 05:05:00"]
    outs = [
        feed("position", raw("pushgps", point(t, gpsMode=1), "push")) for t in times
    ]
    decoded = [codec("Position").decode(out.value) for out in outs]
    assert [d["gps_time"].strftime("%H:%M") for d in decoded] == [
        "05:10",
        "05:00",
        "05:05",
    ]
    assert all(d["reupload"] for d in decoded)


def test_recent_fix_memory_is_bounded():
    memory = RecentFixes(devices=2, per_device=2)
    assert [memory.seen("a", t) for t in (1, 2, 1)] == [False, False, True]
    assert memory.seen("a", 3) is False  # forgets 1, the oldest of "a"
    assert memory.seen("a", 1) is False
    memory.seen("b", 1)
    memory.seen("c", 1)  # evicts "a", the least recently used device
    assert len(memory) == 2
    assert memory.seen("a", 3) is False
    assert memory.seen("c", 1) is True


def test_unusable_records_become_dead_letters_with_their_origin(make_settings):
    feed = Feed(make_settings)
    value = raw("pushgps", point("2025-03-10 05:00:00", lat=0, lng=0), "push")
    out = feed("position", value, key=b"k")
    letter = codec("DeadLetter").decode(out.value)
    assert out.topic == feed.settings.topic("deadletter", "all")
    assert out.key == b"k"
    assert {
        k: letter[k]
        for k in (
            "stage",
            "origin_topic",
            "origin_partition",
            "origin_offset",
            "key",
            "value",
        )
    } == {
        "stage": "process",
        "origin_topic": feed.settings.topic("raw", "position"),
        "origin_partition": 0,
        "origin_offset": 1,
        "key": b"k",
        "value": value,
    }
    assert "(0,0)" in letter["reason"]


def test_records_of_an_unknown_schema_are_dead_letters(make_settings):
    feed = Feed(make_settings)
    foreign = b"\xc3\x01" + bytes(8) + b"body"
    letter = codec("DeadLetter").decode(feed("alarm", foreign).value)
    assert "unknown writer schema fingerprint" in letter["reason"]
    letter = codec("DeadLetter").decode(feed("alarm", b"").value)
    assert "not an Avro single-object message" in letter["reason"]
    letter = codec("DeadLetter").decode(feed("alarm", None).value)
    assert (letter["reason"], letter["value"]) == (
        "message has no value (tombstone)",
        None,
    )
    assert feed.router.counts == {"deadletter": 3}


def test_payload_imei_wins_over_the_key_for_routing(make_settings):
    feed = Feed(make_settings)
    out = feed(
        "position",
        raw("pushgps", point("2025-03-10 05:00:00"), "push", imei=None),
        key=b"",
    )
    assert out.key == IMEI.encode()


def test_future_tolerance_comes_from_settings(make_settings):
    feed = Feed(make_settings, future_fix_tolerance_seconds=3600)
    out = feed("position", raw("pushgps", point("2025-03-10 07:59:00"), "push"))
    assert out.topic.endswith(".clean.position")
    strict = Feed(make_settings, future_fix_tolerance_seconds=0)
    out = strict("position", raw("pushgps", point("2025-03-10 07:00:01"), "push"))
    assert out.topic.endswith(".deadletter.all")


def test_platform_timezone_comes_from_settings(make_settings):
    feed = Feed(make_settings, platform_timezone="Africa/Nairobi")
    out = feed("position", raw("pushgps", point("2025-03-10 08:00:00"), "push"))
    decoded = codec("Position").decode(out.value)
    assert decoded["gps_time"].isoformat() == "2025-03-10T05:00:00+00:00"


def test_an_expired_device_is_dead_lettered_once_then_heard_as_alive(make_settings):
    feed = Feed(make_settings)
    expired = point(
        "2024-12-31 21:58:31",
        lat=0,
        lng=0,
        hbTime="2024-12-31 21:59:00",
        expireFlag="0",
    )
    outs = [
        feed("position", raw("jimi.user.device.location.list", expired))
        for _ in range(3)
    ]
    assert [out.topic.split(".", 1)[1] for out in outs] == [
        "deadletter.all",
        "clean.heartbeat",
        "clean.heartbeat",
    ]
    valid_same_time = point("2024-12-31 21:58:31")
    out = feed("position", raw("jimi.device.track.list", valid_same_time))
    assert out.topic.endswith(".clean.position")  # a rejection never hides a fix


def test_repeated_unusable_pushes_are_each_dead_lettered(make_settings):
    feed = Feed(make_settings)
    zero = point("2025-03-10 06:20:28", lat=0, lng=0)
    outs = [feed("position", raw("pushgps", zero, "push")) for _ in range(2)]
    assert [out.topic.split(".", 1)[1] for out in outs] == ["deadletter.all"] * 2


def test_payload_that_is_not_strict_json_is_dead_lettered(make_settings):
    feed = Feed(make_settings)
    value = codec("RawEvent").encode(
        {
            "source": "push",
            "origin": "pushgps",
            "received_at": RECEIVED_AT,
            "imei": IMEI,
            "request_id": None,
            "payload": '{"imei": "860001000000011", "lat": NaN, "lng": 36.8}',
        }
    )
    letter = codec("DeadLetter").decode(feed("position", value).value)
    assert letter["reason"] == "payload is not JSON"


def test_a_batch_routes_exactly_as_its_records_one_by_one(make_settings):
    snapshot = point("2025-03-10 05:00:00", hbTime="2025-03-10 05:00:30")
    values = [
        raw("jimi.device.track.list", point("2025-03-10 05:00:00")),
        raw("pushgps", point("2025-03-10 05:00:00"), "push"),
        b"not avro",
        None,
        raw("pushgps", {**point("2025-03-10 05:01:00"), "lat": 0, "lng": 0}),
        raw("jimi.user.device.location.list", snapshot),
        raw("jimi.user.device.location.list", {**snapshot, "hbTime": "05:02"}),
        raw("jimi.user.device.location.list", {**snapshot, "accStatus": "1"}),
        raw("pushgps", point("2025-03-10 04:59:50", gpsSpeed="fast")),
        raw("pushgps", point("2025-03-10 04:59:40", direction="-1")),
        raw("jimi.device.track.list", point("2025-03-10 05:00:00")),
    ]
    messages = [Message(offset, IMEI.encode(), v) for offset, v in enumerate(values)]
    one_by_one = Feed(make_settings)
    topic = one_by_one.settings.topic("raw", "position")
    batched = Router(one_by_one.settings)

    expected = [
        one_by_one.router.route(topic, 3, m.offset, m.key, m.value) for m in messages
    ]
    routed = batched.route_batch(topic, 3, messages)

    assert [without_failed_at(out) for out in routed] == [
        without_failed_at(out) for out in expected if out is not None
    ]
    assert batched.counts == one_by_one.router.counts
    assert batched.counts["deadletter"] == 5


def without_failed_at(out):
    """Return a message comparable across runs: dead letters lose their time."""
    if not out.topic.endswith(".deadletter.all"):
        return out
    letter = codec("DeadLetter").decode(out.value)
    letter.pop("failed_at")
    return out.topic, out.key, letter

"""The processing stage on the real broker: raw in, clean and dead letters out."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import urllib.parse
from pathlib import Path

from fleetstream.codec import codec
from fleetstream.kafka import ensure_topics, make_consumer, make_producer
from processors.app import run
from processors.collector import YOUNG_THRESHOLD, BatchCollector

RECEIVED_AT = 1741590000000  # 2025-03-10T07:00:00Z, after every sample fix

LOCATION = {
    "imei": "860001000000011",
    "posType": "GPS",
    "lat": -1.286389,
    "lng": 36.817223,
    "hbTime": "2025-03-10 05:11:58",
    "gpsTime": "2025-03-10 05:12:40",
    "speed": "42",
    "direction": "118",
    "accStatus": "1",
    "gpsNum": "12",
    "currentMileage": "18234.7",
}


def raw_event(origin: str, payload, *, imei: str | None = None, source="poll") -> bytes:
    return codec("RawEvent").encode(
        {
            "source": source,
            "origin": origin,
            "received_at": RECEIVED_AT,
            "imei": imei,
            "payload": payload if isinstance(payload, str) else json.dumps(payload),
            "request_id": None,
        }
    )


async def produce(settings, kind: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic("raw", kind)
        for key, value in messages:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(settings, counts: dict[str, int], timeout: float = 30.0) -> dict:
    """Read clean/dead-letter topics until each has ``counts`` messages."""
    topics = {settings.topic(*name.split(".")): name for name in counts}
    got: dict[str, list] = {name: [] for name in counts}
    consumer = make_consumer(settings, *topics, group_id=None)
    await consumer.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                got[topics[tp.topic]].extend(records)
            if all(len(got[name]) >= want for name, want in counts.items()):
                await asyncio.sleep(1.0)  # anything extra would show up now
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    got[topics[tp.topic]].extend(records)
                break
    finally:
        await consumer.stop()
    return got


async def test_positions_are_cleaned_deduplicated_and_dead_lettered(make_settings):
    settings = make_settings()
    await ensure_topics(settings)
    imei = LOCATION["imei"].encode()
    repeat = {**LOCATION, "hbTime": "2025-03-10 05:13:58"}
    zero = {**LOCATION, "imei": "860001000000037", "lat": 0, "lng": 0}
    await produce(
        settings,
        "position",
        [
            (imei, raw_event("jimi.user.device.location.list", LOCATION)),
            (imei, raw_event("jimi.user.device.location.list", repeat)),
            (b"860001000000037", raw_event("jimi.user.device.location.list", zero)),
            (imei, b"not avro at all"),
            (imei, raw_event("pushgps", "[1, 2]", source="push")),
        ],
    )
    stop = asyncio.Event()
    routers = []
    worker = asyncio.create_task(
        run(settings, stop, on_ready=lambda app, router: routers.append(router))
    )
    try:
        got = await consume(
            settings, {"clean.position": 1, "clean.heartbeat": 1, "deadletter.all": 3}
        )
        counted = routers[0].dead_letters_seen
        for _ in range(100):  # the metric agent reads the dead-letter topic back
            if counted["process"] >= 3:
                break
            await asyncio.sleep(0.1)
        assert dict(counted) == {"process": 3}
        assert routers[0].counts["deadletter"] == 3
        assert routers[0].counts["duplicate"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert len(got["clean.position"]) == 1
    position = codec("Position").decode(got["clean.position"][0].value)
    assert got["clean.position"][0].key == imei
    assert position["gps_time"].isoformat() == "2025-03-10T05:12:40+00:00"
    assert (position["speed_kmh"], position["acc_on"]) == (42.0, True)
    assert position["odometer_m"] == 18234700.0

    assert len(got["clean.heartbeat"]) == 1
    heartbeat = codec("Heartbeat").decode(got["clean.heartbeat"][0].value)
    assert heartbeat["heartbeat_time"].isoformat() == "2025-03-10T05:13:58+00:00"

    dead = [codec("DeadLetter").decode(r.value) for r in got["deadletter.all"]]
    assert len(dead) == 3
    origins = {(d["origin_partition"], d["origin_offset"]) for d in dead}
    assert sorted(d["stage"] for d in dead) == ["process"] * 3
    assert any("(0,0)" in d["reason"] for d in dead)
    assert any(d["value"] == b"not avro at all" for d in dead)
    assert any("JSON list" in d["reason"] for d in dead)
    assert all(d["origin_topic"] == settings.topic("raw", "position") for d in dead)
    assert len(origins) == 3


GOOD_RECORDS = {
    # raw kind: (origin, payload, clean topic)
    "heartbeat": (
        "pushhb",
        {"deviceImei": "860001000000011", "gateTime": "2025-03-10 06:21:00", "acc": 1},
        "heartbeat",
    ),
    "alarm": (
        "jimi.push.device.alarm",
        {
            "imei": "860001000000011",
            "alarmType": "6",
            "alarmTime": "2025-03-10 06:20:33",
        },
        "alarm",
    ),
    "device": (
        "jimi.user.device.list",
        {"imei": "860001000000011", "vehicleNumber": "kzz-101a"},
        "device",
    ),
    "trip": (
        "jimi.device.track.mileage",
        {
            "imei": "860001000000011",
            "startTime": "2025-03-10 03:58:10",
            "endTime": "2025-03-10 04:09:50",
            "distance": 9.42,
        },
        "trip",
    ),
    "parking": (
        "jimi.open.platform.report.parking",
        {
            "imei": "860001000000011",
            "startTime": "2025-03-10T04:09:50.000Z",
            "acc": "off",
        },
        "parking",
    ),
    "event": (
        "pushevent",
        {
            "deviceImei": "860001000000011",
            "type": "LOGIN",
            "gateTime": "2025-03-10 06:00:00",
        },
        "event",
    ),
    "lbs": (
        "pushlbs",
        {"deviceImei": "860001000000011", "gateTime": "2025-03-10 06:22:10"},
        "lbs",
    ),
    "obd": (
        "pushobd",
        {
            "deviceImei": "860001000000011",
            "gateTime": "2025-03-10 06:22:10",
            "currentRPM": "900",
        },
        "obd",
    ),
    "fault": (
        "pushfaultinfo",
        {
            "deviceImei": "860001000000011",
            "faultCode": "P0301",
            "gateTime": "2025-03-10 06:22:10",
        },
        "fault",
    ),
    "temperature": (
        "pushtem",
        {"deviceImei": "860001000000011", "gateTime": "2025-03-10 06:22:10"},
        "temperature",
    ),
    "fuel": (
        "pushoil",
        {"deviceImei": "860001000000011", "gateTime": "2025-03-10 06:22:10"},
        "fuel",
    ),
}


async def test_every_kind_reaches_its_clean_topic(make_settings):
    settings = make_settings()
    await ensure_topics(settings)
    imei = b"860001000000011"
    for kind, (origin, payload, _) in GOOD_RECORDS.items():
        broken = {k: v for k, v in payload.items() if k not in ("imei", "deviceImei")}
        await produce(
            settings,
            kind,
            [(imei, raw_event(origin, payload)), (imei, raw_event(origin, broken))],
        )
    await produce(settings, "other", [(imei, raw_event("pushfileupload", {"a": 1}))])
    want = {f"clean.{clean}": 1 for _, _, clean in GOOD_RECORDS.values()}
    # One per kind for the record without an IMEI, one for the unknown origin.
    want["deadletter.all"] = len(GOOD_RECORDS) + 1

    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop, agent_modules=()))
    try:
        got = await consume(settings, want)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert {name: len(records) for name, records in got.items()} == want
    device = codec("Device").decode(got["clean.device"][0].value)
    assert device["vehicle_number_norm"] == "KZZ101A"
    dead = [codec("DeadLetter").decode(r.value) for r in got["deadletter.all"]]
    assert {d["reason"] for d in dead} == {
        "no IMEI in the record or its envelope",
        "no cleaner for origin pushfileupload",
    }
    assert {d["origin_topic"].split(".")[-1] for d in dead} == {*GOOD_RECORDS, "other"}


async def test_agents_see_new_records_quickly_on_the_embedded_broker(make_settings):
    """faust's own fetch wait (1.5 s) is shortened for the embedded broker.

    tansu does not wake a waiting fetch when records arrive, so each hop through
    a faust agent would otherwise take up to 1.5 s (0.75 s on average). A real
    Kafka broker wakes the fetch itself and passes this test unchanged.
    """
    settings = make_settings()
    stop = asyncio.Event()
    routers = []
    worker = asyncio.create_task(
        run(
            settings,
            stop,
            on_ready=lambda app, router: routers.append(router),
            agent_modules=(),
        )
    )
    producer = make_producer(settings)
    await producer.start()
    letter = codec("DeadLetter").encode(
        {
            "stage": "sink",
            "reason": "probe",
            "origin_topic": "t",
            "origin_partition": 0,
            "origin_offset": 0,
            "key": None,
            "value": None,
            "failed_at": RECEIVED_AT,
        }
    )
    latencies = []
    try:
        while not routers:
            await asyncio.sleep(0.05)
        counted = routers[0].dead_letters_seen
        for n in range(1, 8):
            started = time.monotonic()
            await producer.send_and_wait(settings.topic("deadletter", "all"), letter)
            while counted["sink"] < n and time.monotonic() - started < 10:
                await asyncio.sleep(0.005)
            latencies.append(time.monotonic() - started)
    finally:
        await producer.stop()
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert counted["sink"] == 7
    assert sorted(latencies)[3] < 0.4, latencies


def sample_messages() -> dict[str, list[tuple[bytes, bytes]]]:
    """Return every platform sample as raw messages, by raw kind."""
    samples = Path(__file__).parent / "fixtures" / "tracksolid"

    def rows(name, *path):
        body = json.loads((samples / name).read_text())
        for step in path:
            body = body[step]
        return body

    def pushed(name):
        form = dict(urllib.parse.parse_qsl((samples / name).read_text().strip()))
        return (
            json.loads(form["data_list"])
            if "data_list" in form
            else [json.loads(form["data"])]
        )

    track_imei = "860001000000011"
    by_kind = {
        "position": [
            ("jimi.user.device.location.list", r, None, "poll")
            for r in rows("location_list_response.json", "result")
        ]
        + [
            ("jimi.device.track.list", r, track_imei, "poll")
            for r in rows("track_list_response.json", "result")
        ]
        + [("pushgps", r, None, "push") for r in pushed("push_pushgps.form.txt")],
        "heartbeat": [
            ("pushhb", r, None, "push") for r in pushed("push_pushhb.form.txt")
        ],
        "alarm": [
            ("jimi.device.alarm.list", r, None, "poll")
            for r in rows("alarm_list_response.json", "result")
        ]
        + [("pushalarm", r, None, "push") for r in pushed("push_pushalarm.form.txt")]
        + [
            ("jimi.push.device.alarm", r, None, "push")
            for r in pushed("push_jimi_device_alarm.form.txt")
        ],
        "device": [
            ("jimi.user.device.list", r, None, "poll")
            for r in rows("device_list_response.json", "result")
        ],
        "trip": [
            ("jimi.device.track.mileage", r, None, "poll")
            for r in rows("track_mileage_response.json", "result")
        ],
        "parking": [
            ("jimi.open.platform.report.parking", r, None, "poll")
            for r in rows("report_parking_response.json", "data", "rows")
        ],
        "lbs": [("pushlbs", r, None, "push") for r in pushed("push_pushlbs.form.txt")],
    }
    messages = {}
    for kind, records in by_kind.items():
        messages[kind] = []
        for origin, record, imei, source in records:
            imei = imei or record.get("imei") or record.get("deviceImei")
            value = raw_event(origin, record, imei=imei, source=source)
            messages[kind].append((imei.encode(), value))
    return messages


async def test_platform_samples_end_to_end(make_settings):
    settings = make_settings()
    await ensure_topics(settings)
    for kind, messages in sample_messages().items():
        await produce(settings, kind, messages)
    want = {
        # 3 snapshots - 1 expired at (0,0); 5 track points - 1 repeat; 3 pushes -
        # 1 at (0,0); the pushed 06:20:30 fix and the others are all distinct.
        "clean.position": 2 + 4 + 2,
        "clean.heartbeat": 2,
        "clean.alarm": 4 + 1 + 1,
        "clean.device": 3,
        "clean.trip": 1,
        "clean.parking": 2,
        "clean.lbs": 1,
        "deadletter.all": 2,
    }
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop, agent_modules=()))
    try:
        got = await consume(settings, want)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    assert {name: len(records) for name, records in got.items()} == want
    dead = [codec("DeadLetter").decode(r.value) for r in got["deadletter.all"]]
    assert all("(0,0)" in d["reason"] for d in dead)
    positions = [codec("Position").decode(r.value) for r in got["clean.position"]]
    assert len({(p["imei"], p["gps_time"]) for p in positions}) == 8


def test_collector_settings_come_back_when_the_last_processor_stops():
    collector = BatchCollector()
    before = gc.get_threshold()

    with collector.running():
        with collector.running():
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
            assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

"""The webhook receiver against the real broker: what it publishes and refuses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition

from fleetstream.codec import codec
from fleetstream.embedded import EmbeddedBroker, free_port, wait_for_port
from fleetstream.errors import RejectedRecord
from fleetstream.kafka import ensure_topics
from fleetstream.topics import RAW_TOPICS
from processors.clean import Raw, device_imei
from producers.webhook import SUCCESS, create_app, token_matches

FIXTURES = Path(__file__).parent / "fixtures" / "tracksolid"
SAMPLE_TOKEN = "synthetic-push-token-001"
FORM = {"content-type": "application/x-www-form-urlencoded"}

# Written out rather than taken from fleetstream.topics, so a wrong mapping there
# shows up here.
KIND_BY_PATH = {
    "pushgps": "position",
    "pushhb": "heartbeat",
    "pushalarm": "alarm",
    "pushevent": "event",
    "pushlbs": "lbs",
    "pushobd": "obd",
    "pushfaultinfo": "fault",
    "pushtem": "temperature",
    "pushoil": "fuel",
    "pushtripreport": "trip",
    "pushIothubEvent": "other",
    "pushSomethingNew": "other",
}


@asynccontextmanager
async def serving(app):
    """Run ``app`` with uvicorn on a free port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def read_topic(settings, topic: str, expected: int, timeout: float = 15.0):
    """Return every message of ``topic``: at least ``expected`` unless time runs out.

    Keeps reading for a moment after reaching ``expected`` so that extra copies
    would be seen too.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        messages = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                messages.extend(records)
            if len(messages) >= expected and settle_until is None:
                settle_until = time.monotonic() + 0.5
            if settle_until is not None and time.monotonic() > settle_until:
                break
        return messages
    finally:
        await consumer.stop()


def decoded(messages):
    raw = codec("RawEvent")
    return [(m.key.decode(), raw.decode(m.value)) for m in messages]


def sample_records(name: str) -> tuple[dict, list[dict]]:
    """Return a sample body's fields and its records, parsed independently."""
    body = (FIXTURES / name).read_text().strip()
    fields = {k: v[0] for k, v in parse_qs(body).items()}
    records = json.loads(fields.get("data_list") or fields["data"])
    return fields, records if isinstance(records, list) else [records]


def gps_record(imei: str, second: int, **extra) -> dict:
    gps_time = datetime(2025, 3, 10, 6, 0, tzinfo=UTC) + timedelta(seconds=second)
    return {
        "deviceImei": imei,
        "gpsTime": gps_time.strftime("%Y-%m-%d %H:%M:%S"),
        "lat": "-1.2631",
        "lng": 36.80465,
        "gpsSpeed": 40,
        **extra,
    }


def form(token: str, records) -> str:
    return urlencode({"token": token, "data_list": json.dumps(records)})


@pytest.fixture
async def receiver(make_settings):
    """Yield (settings, base URL) of a receiver backed by the session broker."""
    settings = make_settings(webhook_push_token=SAMPLE_TOKEN)
    await ensure_topics(settings, RAW_TOPICS)
    async with serving(create_app(settings)) as url:
        yield settings, url


@pytest.mark.parametrize(
    ("sample", "path", "kind"),
    [
        ("push_pushgps.form.txt", "/pushgps", "position"),
        ("push_pushhb.form.txt", "/pushhb", "heartbeat"),
        ("push_pushalarm.form.txt", "/pushalarm", "alarm"),
        ("push_pushlbs.form.txt", "/pushlbs", "lbs"),
        ("push_jimi_device_alarm.form.txt", f"/?token={SAMPLE_TOKEN}", "alarm"),
    ],
)
async def test_every_sample_round_trips_exactly(receiver, sample, path, kind):
    settings, url = receiver
    fields, records = sample_records(sample)
    body = (FIXTURES / sample).read_bytes().strip()
    before = datetime.now(UTC)

    async with httpx.AsyncClient() as client:
        response = await client.post(url + path, content=body, headers=FORM)

    assert response.status_code == 200
    assert response.json() == SUCCESS
    got = decoded(await read_topic(settings, settings.topic("raw", kind), len(records)))
    assert len(got) == len(records)
    payloads = [json.loads(event["payload"]) for _, event in got]
    # Records of one device keep their order; compare as sorted lists overall.
    assert sorted(payloads, key=json.dumps) == sorted(records, key=json.dumps)
    for key, event in got:
        record = json.loads(event["payload"])
        imei = record.get("deviceImei") or record.get("imei")
        assert key == imei == event["imei"]
        assert event["source"] == "push"
        assert event["origin"] == fields.get("msgType", path.strip("/"))
        assert (
            before - timedelta(seconds=1) <= event["received_at"] <= datetime.now(UTC)
        )
    assert len({event["request_id"] for _, event in got}) == 1


async def test_numbers_and_strings_keep_their_json_types(receiver):
    settings, url = receiver
    record = gps_record(
        "860001000000011", 1, satelliteNum="13", distance=18243112, altitude=1676.5
    )
    record["unknownField"] = {"nested": [1, "2", None, True]}

    async with httpx.AsyncClient() as client:
        response = await client.post(
            url + "/pushgps", content=form(SAMPLE_TOKEN, [record]), headers=FORM
        )

    assert response.status_code == 200
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), 1))
    assert json.loads(got[0][1]["payload"]) == record
    assert '"lat": "-1.2631"' in got[0][1]["payload"]


async def test_each_push_path_routes_to_its_raw_topic(receiver):
    settings, url = receiver
    imei_by_path = {path: f"8600010000{i:05d}" for i, path in enumerate(KIND_BY_PATH)}

    async with httpx.AsyncClient() as client:
        for path, imei in imei_by_path.items():
            body = form(SAMPLE_TOKEN, [{"deviceImei": imei, "path": path}])
            response = await client.post(f"{url}/{path}", content=body, headers=FORM)
            assert response.status_code == 200, response.text

    for kind in set(KIND_BY_PATH.values()):
        paths = {p for p, k in KIND_BY_PATH.items() if k == kind}
        got = decoded(
            await read_topic(settings, settings.topic("raw", kind), len(paths))
        )
        assert {event["origin"] for _, event in got} == paths
        assert {key for key, _ in got} == {imei_by_path[p] for p in paths}


async def test_json_bodies_and_data_field_are_accepted(receiver):
    settings, url = receiver
    records = [gps_record("860001000000011", s) for s in range(3)]
    message = {"imei": "860001000000029", "alarmType": "6", "lat": -1.26}

    async with httpx.AsyncClient() as client:
        as_array = await client.post(
            url + "/pushgps", json={"token": SAMPLE_TOKEN, "data_list": records[:1]}
        )
        as_string = await client.post(
            url + "/pushgps",
            json={"token": SAMPLE_TOKEN, "data_list": json.dumps(records[1:2])},
        )
        as_data = await client.post(
            url + "/pushgps",
            content=urlencode({"token": SAMPLE_TOKEN, "data": json.dumps(records[2:])}),
            headers=FORM,
        )
        as_message = await client.post(
            url + "/",
            json={
                "token": SAMPLE_TOKEN,
                "msgType": "jimi.push.device.alarm",
                "data": json.dumps(message),
            },
        )

    assert [r.status_code for r in (as_array, as_string, as_data, as_message)] == [
        200
    ] * 4
    positions = decoded(
        await read_topic(settings, settings.topic("raw", "position"), 3)
    )
    assert sorted(json.loads(e["payload"])["gpsTime"] for _, e in positions) == [
        r["gpsTime"] for r in records
    ]
    alarms = decoded(await read_topic(settings, settings.topic("raw", "alarm"), 1))
    assert [json.loads(e["payload"]) for _, e in alarms] == [message]
    assert alarms[0][1]["origin"] == "jimi.push.device.alarm"


def _form_body(**fields) -> bytes:
    return urlencode(fields).encode()


GOOD = json.dumps([gps_record("860001000000011", 0)])

MALFORMED = {
    "truncated json": (
        _form_body(token=SAMPLE_TOKEN, data_list=GOOD[:-7]),
        FORM,
        400,
        "malformed_json",
    ),
    "data_list an object": (
        _form_body(token=SAMPLE_TOKEN, data_list=json.dumps({"deviceImei": "1"})),
        FORM,
        400,
        "not_an_array",
    ),
    "empty data_list": (
        _form_body(token=SAMPLE_TOKEN, data_list="[]"),
        FORM,
        400,
        "empty_data_list",
    ),
    "no data_list": (_form_body(token=SAMPLE_TOKEN), FORM, 400, "missing_data_list"),
    "NaN is not JSON": (
        _form_body(token=SAMPLE_TOKEN, data_list='[{"deviceImei": "1", "lat": NaN}]'),
        FORM,
        400,
        "malformed_json",
    ),
    "number beyond a double": (
        _form_body(token=SAMPLE_TOKEN, data_list='[{"deviceImei": "1", "lat": 1e999}]'),
        FORM,
        400,
        "malformed_json",
    ),
    "nesting too deep": (
        _form_body(token=SAMPLE_TOKEN, data_list="[" * 100_000 + "]" * 100_000),
        FORM,
        400,
        "malformed_json",
    ),
    "json body nested too deep": (
        b'{"data_list": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        {"content-type": "application/json"},
        400,
        "malformed_json",
    ),
    "wrong token": (
        _form_body(token=SAMPLE_TOKEN + "x", data_list=GOOD),
        FORM,
        403,
        "wrong_token",
    ),
    "no token": (_form_body(data_list=GOOD), FORM, 401, "missing_token"),
    "not utf-8": (b"token=a&data_list=\xff\xfe", FORM, 400, "not_utf8"),
    "not form-encoded": (b"\x00garbage", FORM, 400, "malformed_form"),
    "json body not an object": (
        b"[1, 2]",
        {"content-type": "application/json"},
        400,
        "not_an_object",
    ),
    "unsupported type": (
        GOOD.encode(),
        {"content-type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
}


async def test_malformed_bodies_are_refused_with_a_reason_and_counted(receiver):
    settings, url = receiver

    async with httpx.AsyncClient() as client:
        for case, (body, headers, status, reason) in MALFORMED.items():
            response = await client.post(
                url + "/pushgps", content=body, headers=headers
            )
            assert response.status_code == status, case
            assert response.json()["reason"] == reason, case
            assert response.json()["msg"], case
        marker = gps_record("860001000000099", 59)
        ok = await client.post(
            url + "/pushgps", content=form(SAMPLE_TOKEN, [marker]), headers=FORM
        )
        message = await client.post(
            url + f"/?token={SAMPLE_TOKEN}", content=b"data=%7B%7D", headers=FORM
        )
        metrics = (await client.get(url + "/metrics")).text

    assert ok.status_code == 200
    assert message.json()["reason"] == "missing_msg_type"
    # Nothing of a refused body reaches Kafka: only the marker is there.
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), 1))
    assert [json.loads(e["payload"]) for _, e in got] == [marker]
    reasons = [reason for _, _, _, reason in MALFORMED.values()]
    for reason in set(reasons):
        line = f'origin="pushgps",outcome="{reason}"}} {reasons.count(reason)}'
        assert line in metrics
    assert 'fleetstream_webhook_records_total{origin="pushgps"} 1' in metrics


async def test_token_in_query_is_accepted_and_a_wrong_one_refused(receiver):
    _, url = receiver
    body = urlencode({"data_list": GOOD})

    async with httpx.AsyncClient() as client:
        good = await client.post(
            f"{url}/pushgps?token={SAMPLE_TOKEN}", content=body, headers=FORM
        )
        wrong = await client.post(
            f"{url}/pushgps?token=nope", content=body, headers=FORM
        )

    assert good.status_code == 200
    assert wrong.status_code == 403


def test_token_comparison_is_exact():
    assert token_matches("s3cret", "s3cret")
    assert token_matches("päss", "päss")
    for given in ("s3cre", "s3crett", "S3cret", "", "x3cret", "s3crex", None):
        assert not token_matches(given, "s3cret")


def test_token_comparison_time_does_not_depend_on_where_it_differs():
    expected = "a" * 2_000_000
    early = "b" + expected[1:]
    late = expected[:-1] + "b"

    def fastest(given: str) -> float:
        best = float("inf")
        for _ in range(15):
            start = time.perf_counter()
            token_matches(given, expected)
            best = min(best, time.perf_counter() - start)
        return best

    # A comparison that stops at the first differing byte answers the early
    # mismatch hundreds of times faster than the late one.
    assert fastest(early) / fastest(late) > 0.3


async def test_body_over_the_limit_is_refused_without_reading_it(make_settings):
    settings = make_settings(
        webhook_push_token=SAMPLE_TOKEN, webhook_max_body_bytes=100_000
    )
    async with serving(create_app(settings)) as url:
        port = int(url.rsplit(":", 1)[1])
        # Announce 10 GB and send almost nothing: an answer proves the receiver
        # did not wait for the body.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /pushgps HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000000000\r\n\r\ntoken="
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()

        async def chunks():
            for _ in range(50):
                yield b"a" * 65_536

        async with httpx.AsyncClient() as client:
            chunked = await client.post(
                url + "/pushgps", content=chunks(), headers=FORM
            )
            metrics = (await client.get(url + "/metrics")).text

    assert status_line.startswith(b"HTTP/1.1 413")
    assert chunked.status_code == 413
    assert chunked.json()["reason"] == "body_too_large"
    assert 'outcome="body_too_large"} 2' in metrics


async def test_hundreds_of_concurrent_pushes_land_exactly_once(receiver):
    settings, url = receiver
    bodies = [
        [gps_record(f"8600020000{n % 40:05d}", n * 10 + i) for i in range(1 + n % 4)]
        for n in range(300)
    ]

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    url + "/pushgps", content=form(SAMPLE_TOKEN, b), headers=FORM
                )
                for b in bodies
            )
        )

    assert [r.status_code for r in responses] == [200] * len(bodies)
    sent = sorted(json.dumps(r, sort_keys=True) for b in bodies for r in b)
    got = decoded(
        await read_topic(settings, settings.topic("raw", "position"), len(sent), 60)
    )
    stored = sorted(
        json.dumps(json.loads(e["payload"]), sort_keys=True) for _, e in got
    )
    assert stored == sent


async def push_until_accepted(client, url, record, seconds=60.0):
    """Push like a platform that resends on 503; return the last response."""
    deadline = time.monotonic() + seconds
    while True:
        response = await client.post(
            url + "/pushgps", content=form(SAMPLE_TOKEN, [record]), headers=FORM
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_broker_outage_answers_503_then_recovers(make_settings, state_dir):
    broker = EmbeddedBroker(free_port(), state_dir / "outage-tansu.log")
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        broker_profile="embedded",
        webhook_push_token=SAMPLE_TOKEN,
        kafka_request_timeout_ms=3000,
    )
    records = [gps_record("860001000000011", second) for second in range(4)]
    try:
        async with (
            serving(create_app(settings)) as url,
            httpx.AsyncClient(timeout=30) as client,
        ):
            # The receiver came up before the broker.
            health_down = await client.get(url + "/healthz")
            no_broker_yet = await client.post(
                url + "/pushgps", content=form(SAMPLE_TOKEN, records[:1]), headers=FORM
            )
            broker.start()
            await ensure_topics(settings, RAW_TOPICS)
            first = await push_until_accepted(client, url, records[1])
            health_up = await client.get(url + "/healthz")

            broker.stop()
            started = time.monotonic()
            during = await client.post(
                url + "/pushgps", content=form(SAMPLE_TOKEN, records[2:3]), headers=FORM
            )
            refused_after = time.monotonic() - started

            broker.start()
            # Memory storage lost the topics with the process.
            await ensure_topics(settings, RAW_TOPICS)
            after = await push_until_accepted(client, url, records[3])
            metrics = (await client.get(url + "/metrics")).text

        assert health_down.status_code == 503
        assert no_broker_yet.status_code == 503
        assert no_broker_yet.json()["reason"] == "broker_unavailable"
        assert first.status_code == 200
        assert health_up.status_code == 200
        assert during.status_code == 503
        assert during.json()["reason"] == "broker_unavailable"
        assert refused_after < 10
        assert after.status_code == 200
        assert 'outcome="broker_unavailable"}' in metrics
        # The record acknowledged after the restart is on the new broker; the
        # refused one may be there too (it can land after its 503), which is
        # exactly why it was not acknowledged.
        got = decoded(await read_topic(settings, settings.topic("raw", "position"), 1))
        payloads = [json.loads(e["payload"]) for _, e in got]
        assert records[3] in payloads
        assert records[1] not in payloads
    finally:
        broker.stop()


async def test_stage_process_serves_until_sigterm(make_settings, state_dir):
    settings = make_settings(webhook_push_token=SAMPLE_TOKEN)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_WEBHOOK_PUSH_TOKEN": SAMPLE_TOKEN,
        "FLEETSTREAM_WEBHOOK_HOST": "127.0.0.1",
        "FLEETSTREAM_WEBHOOK_PORT": str(port),
    }
    log = state_dir / f"webhook-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetstream.cli", "webhook"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        url = f"http://127.0.0.1:{port}"
        record = gps_record("860001000000011", 7)
        async with httpx.AsyncClient() as client:
            health = await client.get(url + "/healthz")
            pushed = await client.post(
                url + "/pushgps", content=form(SAMPLE_TOKEN, [record]), headers=FORM
            )
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()

    assert health.status_code == 200
    assert pushed.status_code == 200
    assert code == 0
    assert "webhook receiver stopped" in log.read_text()
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), 1))
    assert [json.loads(e["payload"]) for _, e in got] == [record]


async def test_records_of_one_device_keep_their_body_order(receiver):
    settings, url = receiver
    # Out-of-order gps times on purpose: the body order is what must survive.
    seconds = [5, 3, 9, 1, 7, 2, 8, 0, 6, 4] * 3
    bodies = [
        [gps_record("860001000000011", s, seq=n * 10 + i) for i, s in enumerate(chunk)]
        for n, chunk in enumerate([seconds[:10], seconds[10:20], seconds[20:]])
    ]

    async with httpx.AsyncClient() as client:
        for body in bodies:
            response = await client.post(
                url + "/pushgps", content=form(SAMPLE_TOKEN, body), headers=FORM
            )
            assert response.status_code == 200

    got = decoded(await read_topic(settings, settings.topic("raw", "position"), 30))
    assert [json.loads(e["payload"])["seq"] for _, e in got] == list(range(30))


async def test_bad_records_travel_beside_good_ones_to_the_dead_letter_path(receiver):
    settings, url = receiver
    first, last = gps_record("860001000000011", 0), gps_record("860001000000012", 1)
    elements = [first, 5, {"lat": 1.5}, "text", None, [1, 2], {"imei": " "}, last]
    body = urlencode({"token": SAMPLE_TOKEN, "data_list": json.dumps(elements)})

    async with httpx.AsyncClient() as client:
        response = await client.post(url + "/pushgps", content=body, headers=FORM)
        metrics = (await client.get(url + "/metrics")).text

    assert response.status_code == 200
    got = await read_topic(settings, settings.topic("raw", "position"), len(elements))
    events = [codec("RawEvent").decode(m.value) for m in got]
    assert sorted(e["payload"] for e in events) == sorted(
        json.dumps(e, ensure_ascii=False) for e in elements
    )
    keyed = {m.key: json.loads(e["payload"]) for m, e in zip(got, events, strict=True)}
    assert keyed[b"860001000000011"] == first
    assert keyed[b"860001000000012"] == last
    suspects = [e for e in events if e["imei"] is None]
    assert len(suspects) == 6
    assert all(
        m.key is None for m in got if codec("RawEvent").decode(m.value) in suspects
    )
    # The processor's own reader refuses each suspect with a reason and keeps
    # the good records: nothing of the body is silently lost.
    for event in events:
        try:
            device_imei(Raw.from_event(event))
        except RejectedRecord as exc:
            assert event["imei"] is None and str(exc)
        else:
            assert event["imei"] is not None
    assert 'origin="pushgps",reason="record_not_object"} 4' in metrics
    assert 'origin="pushgps",reason="missing_imei"} 2' in metrics
    assert 'fleetstream_webhook_records_total{origin="pushgps"} 8' in metrics


async def test_health_follows_the_broker_without_any_push(make_settings, state_dir):
    broker = EmbeddedBroker(free_port(), state_dir / "health-tansu.log")
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        broker_profile="embedded",
        webhook_push_token=SAMPLE_TOKEN,
        kafka_request_timeout_ms=3000,
    )

    async def health_until(client, url, status, seconds=20.0):
        deadline = time.monotonic() + seconds
        while True:
            response = await client.get(url + "/healthz")
            if response.status_code == status or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.3)

    try:
        broker.start()
        async with (
            serving(create_app(settings)) as url,
            httpx.AsyncClient(timeout=30) as client,
        ):
            up = await client.get(url + "/healthz")
            broker.stop()
            stopped = time.monotonic()
            down = await health_until(client, url, 503)
            noticed_after = time.monotonic() - stopped
            down_metrics = (await client.get(url + "/metrics")).text
            broker.start()
            again = await health_until(client, url, 200)
    finally:
        broker.stop()

    assert up.status_code == 200 and up.json()["status"] == "ok"
    assert down.status_code == 503
    assert down.json()["status"] == "broker_unavailable"
    # The answer is cached briefly, never for long.
    assert noticed_after < 6
    assert "fleetstream_webhook_broker_up 0" in down_metrics
    assert again.status_code == 200


async def test_a_wedged_producer_is_replaced_instead_of_failing_forever(
    make_settings,
):
    settings = make_settings(
        webhook_push_token=SAMPLE_TOKEN, kafka_request_timeout_ms=1500
    )
    await ensure_topics(settings, RAW_TOPICS)
    app = create_app(settings)
    records = [gps_record("860001000000011", second) for second in range(6)]

    async with serving(app) as url, httpx.AsyncClient(timeout=30) as client:

        async def push(record):
            return await client.post(
                url + "/pushgps", content=form(SAMPLE_TOKEN, [record]), headers=FORM
            )

        before = await push(records[0])
        # Stop the producer under the app: its sender is gone, so sends are
        # queued and never acknowledged, like a client stuck on a dead link.
        wedged = app.state.producers.producer
        await wedged.stop()
        during = [await push(record) for record in records[1:4]]
        after = [await push(record) for record in records[4:]]
        health = await client.get(url + "/healthz")
        metrics = (await client.get(url + "/metrics")).text

    assert before.status_code == 200
    assert [r.status_code for r in during] == [503, 503, 503]
    assert [r.status_code for r in after] == [200, 200]
    assert app.state.producers.producer is not wedged
    assert health.status_code == 200 and health.json()["producer_restarts"] == 1
    assert "fleetstream_webhook_producer_restarts_total 1" in metrics
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), 3))
    payloads = [json.loads(e["payload"]) for _, e in got]
    assert records[0] in payloads and records[4] in payloads and records[5] in payloads


async def test_metrics_labels_stay_few_and_well_formed_whatever_is_sent(receiver):
    _, url = receiver
    odd_paths = [f'/push{n}"}} 1 fake_metric{{x="' for n in range(30)]

    async with httpx.AsyncClient() as client:
        for path in odd_paths:
            await client.post(url + path, content=b"token=wrong&data_list=%5B%7B%7D%5D")
        for n in range(30):
            await client.post(
                url + "/?token=wrong",
                content=urlencode({"msgType": f"jimi.{n}", "data": "{}"}),
                headers=FORM,
            )
        known = await client.post(
            url + "/pushIothubEvent",
            content=form(SAMPLE_TOKEN, [gps_record("860001000000011", 0)]),
            headers=FORM,
        )
        metrics = (await client.get(url + "/metrics")).text

    assert known.status_code == 200
    samples = [line for line in metrics.splitlines() if not line.startswith("#")]
    assert not [line for line in samples if "fake_metric" in line or "jimi.1" in line]
    origins = {
        line.split('origin="')[1].split('"')[0] for line in samples if "origin" in line
    }
    assert origins == {"message", "other"}
    for origin in ("message", "other"):
        line = f'{{origin="{origin}",outcome="wrong_token"}} 30'
        assert line in metrics


async def test_lone_surrogates_are_published_escaped_not_refused(receiver):
    settings, url = receiver
    good = gps_record("860001000000011", 0, driver="Zoë")
    # "\ud800" is valid JSON text but names half a character, which UTF-8
    # (and so Avro) cannot carry as it is.
    odd = '{"deviceImei": "860001000000012", "driver": "\\ud800x"}'
    odd_imei = '{"deviceImei": "8600010000000\\udc0013", "lat": 1}'
    data_list = f"[{json.dumps(good)}, {odd}, {odd_imei}]"

    async with httpx.AsyncClient() as client:
        response = await client.post(
            url + "/pushgps",
            content=urlencode({"token": SAMPLE_TOKEN, "data_list": data_list}),
            headers=FORM,
        )

    assert response.status_code == 200
    got = await read_topic(settings, settings.topic("raw", "position"), 3)
    events = {m.key: codec("RawEvent").decode(m.value) for m in got}
    assert json.loads(events[b"860001000000011"]["payload"]) == good
    assert "Zoë" in events[b"860001000000011"]["payload"]
    assert json.loads(events[b"860001000000012"]["payload"]) == json.loads(odd)
    assert events[None]["imei"] is None
    assert json.loads(events[None]["payload"]) == json.loads(odd_imei)


async def test_a_content_length_with_non_ascii_digits_is_not_a_server_error(
    make_settings,
):
    settings = make_settings()
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            "/pushgps",
            content=b"token=x&data_list=[]",
            headers=[
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", "\u00b2\u00b3".encode("latin-1")),
            ],
        )

    assert response.status_code < 500

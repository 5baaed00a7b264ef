"""Recorded traces, their replay on the wall clock, and the push emitter."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from test_webhook import decoded, read_topic, serving

from fakeplatform.pusher import (
    EXTRA_PATHS,
    REUPLOAD_AFTER_S,
    Pusher,
    PushOptions,
    options_from,
    pusher_from_settings,
)
from fakeplatform.traces import (
    TRACES_DIR,
    Replay,
    expected_fixes,
    format_platform_time,
    history_replay,
    is_valid_imei,
    load_traces,
)
from fleetstream.codec import codec
from fleetstream.embedded import EmbeddedBroker, free_port
from fleetstream.errors import ConfigError
from fleetstream.kafka import ensure_topics
from fleetstream.topics import RAW_TOPICS
from processors.routing import Router
from producers.webhook import create_app

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DRVR = TRACES_DIR / "drvr-trucks-myanmar"
TOKEN = "trace-push-token"


@pytest.fixture(scope="module")
def traces():
    return {trace.name: trace for trace in load_traces()}


def drvr_events(*files):
    events = []
    for file in files:
        events.extend(json.loads((DRVR / file).read_text()))
    return events


def parse(text):
    return datetime.fromisoformat(text)


def test_every_trace_loads_with_a_stable_valid_identity(traces):
    again = load_traces()

    assert set(traces) == {
        "truck-A",
        "truck-B",
        "visnjan-car",
        "denver-1",
        "denver-2",
        "denver-3",
    }
    assert [t.imei for t in again] == [traces[t.name].imei for t in again]
    assert len({t.imei for t in traces.values()}) == len(traces)
    assert len({t.plate.upper().replace(" ", "") for t in traces.values()}) == len(
        traces
    )
    for trace in traces.values():
        assert is_valid_imei(trace.imei), trace.imei
        assert min(p.offset_s for p in trace.points) == 0
        assert trace.duration_s == max(p.offset_s for p in trace.points)
        assert all(p.delivery_offset_s >= p.offset_s for p in trace.points)
    imei = traces["truck-A"].imei
    assert not is_valid_imei(imei[:-1] + str((int(imei[-1]) + 1) % 10))


def test_unknown_trace_names_are_refused():
    with pytest.raises(ValueError, match="no-such-truck"):
        load_traces(["truck-A", "no-such-truck"])


def test_truck_a_is_both_parts_with_recorded_lateness_repeats_and_inversions(traces):
    trace = traces["truck-A"]
    events = drvr_events(
        "truck-A_2018-05-03_part1.json", "truck-A_2018-05-03_part2.json"
    )
    positions = [e["ev"] for e in events if e["type"] == "vehicle-position"]
    fix_times = [parse(ev["pos"]["posTime"]) for ev in positions]
    start = min(fix_times)

    assert len(trace.points) == len(positions)
    assert trace.duration_s == (max(fix_times) - start).total_seconds()
    offsets = [p.offset_s for p in trace.points]
    assert offsets == [(t - start).total_seconds() for t in fix_times]
    lateness = [
        (parse(ev["receivedTs"]) - parse(ev["pos"]["posTime"])).total_seconds()
        for ev in positions
    ]
    got_lateness = [p.delivery_offset_s - p.offset_s for p in trace.points]
    assert got_lateness == pytest.approx(lateness, abs=1e-6)
    assert max(got_lateness) > 170
    inversions = sum(1 for a, b in zip(offsets, offsets[1:], strict=False) if b < a)
    assert inversions == 3
    assert len(offsets) - len(set(offsets)) > 200
    assert len(expected_fixes(trace)) == len(set(offsets))
    assert {p.acc_on for p in trace.points} == {True}
    assert {p.odometer_m for p in trace.points} == {None}


def test_truck_b_has_ignition_and_a_can_odometer_in_metres(traces):
    trace = traces["truck-B"]
    events = drvr_events("truck-B_2018-05-04.json")
    totals = [
        e["ev"]["telemetryInfo"]["totDist"]
        for e in events
        if e["type"] == "vehicle-telemetry"
    ]
    odometers = [p.odometer_m for p in trace.points]

    assert odometers[0] == totals[0] * 100
    assert odometers[-1] == totals[-1] * 100
    assert set(odometers) <= {t * 100.0 for t in totals}
    assert odometers == sorted(odometers)
    assert {p.acc_on for p in trace.points} == {True}
    late = max(p.delivery_offset_s - p.offset_s for p in trace.points)
    assert 500 < late < 600


def test_gpx_car_derives_speed_and_heading_from_consecutive_points(traces):
    trace = traces["visnjan-car"]
    points = trace.points

    assert len(points) == 104
    assert trace.duration_s == 514.0
    assert {p.acc_on for p in points} == {None}
    for a, b in zip(points, points[1:], strict=False):
        dt = b.offset_s - a.offset_s
        # Equirectangular distance: close enough over a few hundred metres.
        dy = math.radians(b.lat - a.lat) * 6_371_000
        dx = math.radians(b.lng - a.lng) * 6_371_000 * math.cos(math.radians(a.lat))
        assert b.speed_kmh == pytest.approx(math.hypot(dx, dy) / dt * 3.6, abs=0.2)
        if math.hypot(dx, dy) > 5:
            heading = math.degrees(math.atan2(dx, dy)) % 360
            diff = abs(b.direction - heading) % 360
            assert min(diff, 360 - diff) < 2
    assert all(p.altitude_m is not None for p in points)


def test_denver_rows_are_one_second_apart(traces):
    for number in (1, 2, 3):
        trace = traces[f"denver-{number}"]
        with (
            TRACES_DIR / "mappymatch-denver" / f"sample_trace_{number}.csv"
        ).open() as f:
            rows = list(csv.DictReader(f))

        assert [p.offset_s for p in trace.points] == [
            float(i) for i in range(len(rows))
        ]
        assert [(p.lat, p.lng) for p in trace.points] == [
            (float(r["latitude"]), float(r["longitude"])) for r in rows
        ]


def test_history_replay_has_delivered_every_fix_by_now(traces):
    replay = history_replay(traces.values(), NOW)

    delivered = replay.delivered(NOW - timedelta(days=2), NOW)
    assert len(delivered) == sum(len(t.points) for t in traces.values())
    assert replay.delivered(NOW, NOW + timedelta(days=2)) == []
    for trace in traces.values():
        fixes = replay.fixes(trace.imei, NOW - timedelta(days=2), NOW, NOW)
        assert len(fixes) == len(trace.points)
        assert [gps for gps, _ in fixes] == sorted(gps for gps, _ in fixes)
        start = fixes[0][0]
        assert {(gps - start).total_seconds() for gps, _ in fixes} == expected_fixes(
            trace
        )
        assert all(gps.microsecond == 0 for gps, _ in fixes)
        assert replay.latest(trace.imei, NOW) == (fixes[-1][0], fixes[-1][1])
        assert fixes[-1][0] <= NOW


def test_a_late_fix_is_unknown_until_it_is_delivered(traces):
    trace = traces["truck-B"]
    replay = history_replay([trace], NOW)
    late = max(trace.points, key=lambda p: p.delivery_offset_s - p.offset_s)
    gps = replay.instant(trace, 0, late.offset_s)
    arrives = replay.instant(trace, 0, late.delivery_offset_s)

    before = replay.fixes(trace.imei, gps, gps, arrives - timedelta(seconds=1))
    after = replay.fixes(trace.imei, gps, gps, arrives)

    assert late not in [p for _, p in before]
    assert late in [p for _, p in after]
    latest_before = replay.latest(trace.imei, arrives - timedelta(seconds=1))
    assert latest_before is not None and latest_before[1] is not late


def test_consecutive_windows_deliver_each_fix_exactly_once(traces):
    replay = Replay(traces.values(), NOW, speedup=7.0, loop=True)
    end = NOW + timedelta(hours=1)
    whole = replay.delivered(NOW - timedelta(seconds=1), end)

    pieces = []
    edge = NOW - timedelta(seconds=1)
    while edge < end:
        step = min(edge + timedelta(seconds=3.3), end)
        pieces.extend(replay.delivered(edge, step))
        edge = step

    key = lambda item: (item[0].imei, item[2], item[1].delivery_offset_s)  # noqa: E731
    assert Counter(map(key, pieces)) == Counter(map(key, whole))
    assert len(whole) > sum(len(t.points) for t in traces.values())


def test_looping_shifts_each_pass_and_gps_time_always_advances(traces):
    trace = traces["visnjan-car"]
    replay = Replay([trace], NOW, speedup=1.0, loop=True, gap_s=20.0)
    period = trace.duration_s + 20.0
    end = NOW + timedelta(seconds=3 * period - 1)

    deliveries = replay.deliveries(NOW - timedelta(seconds=1), end)

    passes = defaultdict(list)
    for d in deliveries:
        passes[d.pass_index].append(d.gps_time)
    assert sorted(passes) == [0, 1, 2]
    assert all(len(times) == len(trace.points) for times in passes.values())
    for n in (1, 2):
        assert max(passes[n - 1]) < min(passes[n])
        assert min(passes[n]) - min(passes[n - 1]) == timedelta(seconds=period)
    latest = replay.latest(trace.imei, end)
    assert latest[0] == max(passes[2])
    once = Replay([trace], NOW, loop=False)
    assert len(once.delivered(NOW - timedelta(seconds=1), end)) == len(trace.points)


def test_speedup_compresses_delivery_and_fix_times(traces):
    trace = traces["truck-B"]
    replay = Replay([trace], NOW, speedup=10.0, loop=False)
    last = max(p.delivery_offset_s for p in trace.points)

    delivered = replay.deliveries(NOW - timedelta(seconds=1), NOW + timedelta(days=1))

    assert len(delivered) == len(trace.points)
    assert delivered[-1].delivered_at == NOW + timedelta(seconds=last / 10)
    assert max(d.gps_time for d in delivered) == NOW + timedelta(
        seconds=trace.duration_s / 10
    )


@pytest.fixture
async def receiver(make_settings):
    settings = make_settings(webhook_push_token=TOKEN)
    await ensure_topics(settings, RAW_TOPICS)
    async with serving(create_app(settings)) as url:
        yield settings, url


async def test_pusher_delivers_every_fix_in_platform_shape(receiver, traces):
    settings, url = receiver
    chosen = [traces["truck-B"], traces["visnjan-car"]]
    replay = history_replay(chosen, NOW)
    pusher = Pusher(replay, url, TOKEN, PushOptions(heartbeat_interval_s=60))
    total = sum(len(t.points) for t in chosen)

    await pusher.push_window(NOW - timedelta(days=1), NOW)

    assert pusher.records[("pushgps", "accepted")] == total
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), total))
    records = [json.loads(e["payload"]) for _, e in got]
    assert len(records) == total
    for trace in chosen:
        mine = [r for r in records if r["deviceImei"] == trace.imei]
        expected = {
            format_platform_time(gps)
            for gps, _ in replay.fixes(trace.imei, NOW - timedelta(days=1), NOW, NOW)
        }
        assert {r["gpsTime"] for r in mine} == expected
        late = sum(
            p.delivery_offset_s - p.offset_s > REUPLOAD_AFTER_S for p in trace.points
        )
        assert sum(r["gpsMode"] == 1 for r in mine) == late
    truck_b = [r for r in records if r["deviceImei"] == traces["truck-B"].imei]
    assert all(r["acc"] == 1 and "distance" in r for r in truck_b)
    car = [r for r in records if r["deviceImei"] == traces["visnjan-car"].imei]
    assert all(r["acc"] == "" and "distance" not in r for r in car)
    # Like the platform, some numbers arrive as numeric strings.
    kinds = Counter(type(r["lat"]).__name__ for r in records)
    assert kinds["str"] > 0 and kinds["float"] > 0
    batches = Counter(e["request_id"] for _, e in got)
    assert max(batches.values()) == 50
    assert len(batches) == math.ceil(total / 50)

    beats = decoded(await read_topic(settings, settings.topic("raw", "heartbeat"), 2))
    assert sorted(k for k, _ in beats) == sorted(t.imei for t in chosen)


async def test_pusher_options_duplicates_events_and_alarms(receiver, traces):
    settings, url = receiver
    trace = traces["visnjan-car"]
    replay = history_replay([trace], NOW)
    options = PushOptions(
        batch_size=10,
        duplicate_every=3,
        heartbeat_interval_s=0,
        events=True,
        overspeed_kmh=40,
        alarm_shape="message",
    )
    pusher = Pusher(replay, url, TOKEN, options)
    batches = math.ceil(len(trace.points) / 10)
    duplicated = [n for n in range(1, batches + 1) if n % 3 == 0]
    extra = sum(min(10, len(trace.points) - (n - 1) * 10) for n in duplicated)
    speeding_starts = sum(
        1
        for a, b in zip((None, *trace.points), trace.points, strict=False)
        if b.speed_kmh > 40 and (a is None or a.speed_kmh <= 40)
    )

    await pusher.push_window(NOW - timedelta(days=1), NOW)

    total = len(trace.points) + extra
    got = decoded(await read_topic(settings, settings.topic("raw", "position"), total))
    payloads = Counter(e["payload"] for _, e in got)
    assert len(got) == total
    assert sum(n == 2 for n in payloads.values()) == extra
    # The event batch follows the position batches and is duplicated like them.
    copies = 2 if (batches + 1) % 3 == 0 else 1
    events = decoded(
        await read_topic(settings, settings.topic("raw", "event"), 2 * copies)
    )
    assert (
        sorted(json.loads(e["payload"])["type"] for _, e in events)
        == ["LOGIN"] * copies + ["LOGOUT"] * copies
    )
    alarms = decoded(
        await read_topic(settings, settings.topic("raw", "alarm"), speeding_starts)
    )
    assert speeding_starts > 0
    assert len(alarms) == speeding_starts
    assert {e["origin"] for _, e in alarms} == {"jimi.push.device.alarm"}


async def test_pusher_does_not_retry_by_default(receiver, traces):
    settings, url = receiver
    trace = traces["visnjan-car"]
    replay = history_replay([trace], NOW)
    refused = Pusher(replay, url, "wrong-token", PushOptions(heartbeat_interval_s=0))
    unreachable = Pusher(
        replay, "http://127.0.0.1:9", TOKEN, PushOptions(heartbeat_interval_s=0)
    )

    await refused.push_window(NOW - timedelta(days=1), NOW)
    await unreachable.push_window(NOW - timedelta(days=1), NOW)

    batches = math.ceil(len(trace.points) / 50)
    assert refused.requests == Counter({("pushgps", "refused"): batches})
    assert unreachable.records == Counter({("pushgps", "failed"): len(trace.points)})
    assert await read_topic(settings, settings.topic("raw", "position"), 1, 2) == []


async def test_pusher_runs_on_the_wall_clock_until_stopped(receiver, traces):
    settings, url = receiver
    start = datetime.now(UTC)
    replay = Replay(load_traces(["denver-2"]), start, speedup=50.0)
    pusher = Pusher(
        replay, url, TOKEN, PushOptions(interval_s=0.3, heartbeat_interval_s=0)
    )
    stop = asyncio.Event()

    task = asyncio.create_task(pusher.run(stop, since=start))
    await asyncio.sleep(2.5)
    stop.set()
    await task

    accepted = pusher.records[("pushgps", "accepted")]
    assert accepted >= 50
    assert set(pusher.records) == {("pushgps", "accepted")}
    got = decoded(
        await read_topic(settings, settings.topic("raw", "position"), accepted)
    )
    gps_times = [json.loads(e["payload"])["gpsTime"] for _, e in got]
    assert len(gps_times) == accepted
    assert all(t >= format_platform_time(start) for t in gps_times)
    assert all(t <= format_platform_time(datetime.now(UTC)) for t in gps_times)


async def test_pusher_reaches_the_receiver_through_a_real_client(receiver, traces):
    """A caller-owned client is used as is and left open."""
    _, url = receiver
    replay = history_replay([traces["denver-2"]], NOW)
    async with httpx.AsyncClient() as client:
        pusher = Pusher(replay, url, TOKEN, PushOptions(heartbeat_interval_s=0), client)
        await pusher.push_window(NOW - timedelta(days=1), NOW)
        assert not client.is_closed
    assert pusher.records[("pushgps", "accepted")] == len(traces["denver-2"].points)


@pytest.mark.parametrize("shape", ["iothub", "flat"])
async def test_pusher_alarm_shapes_reach_the_alarm_topic(receiver, traces, shape):
    settings, url = receiver
    trace = traces["truck-B"]
    replay = history_replay([trace], NOW)
    options = PushOptions(heartbeat_interval_s=0, overspeed_kmh=50, alarm_shape=shape)
    pusher = Pusher(replay, url, TOKEN, options)

    await pusher.push_window(NOW - timedelta(days=1), NOW)

    sent = pusher.records[("pushalarm", "accepted")]
    assert sent > 0
    got = decoded(await read_topic(settings, settings.topic("raw", "alarm"), sent))
    assert len(got) == sent
    assert {key for key, _ in got} == {trace.imei}
    for _, event in got:
        alarm = json.loads(event["payload"])
        body = alarm["msg"] if shape == "iothub" else alarm
        assert body.get("alertType", body.get("alarmType")) == "6"
        assert event["origin"] == "pushalarm"


async def test_pusher_from_settings_targets_the_receiver(receiver, make_settings):
    settings, url = receiver
    replay = history_replay(load_traces(["denver-2"]), NOW)

    assert pusher_from_settings(replay, make_settings()) is None
    pusher = pusher_from_settings(
        replay,
        make_settings(
            fake_push_url=url, webhook_push_token=TOKEN, fake_push_interval_seconds=2
        ),
    )
    await pusher.push_window(NOW - timedelta(days=1), NOW)

    assert pusher.options.interval_s == 2
    assert pusher.records[("pushgps", "accepted")] == len(replay.traces[0].points)


async def test_pusher_with_retries_outlasts_a_receiver_outage(make_settings, state_dir):
    broker = EmbeddedBroker(free_port(), state_dir / "pusher-retry-tansu.log")
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        webhook_push_token=TOKEN,
        kafka_request_timeout_ms=1000,
    )
    replay = history_replay(load_traces(["visnjan-car"]), NOW)
    options = PushOptions(heartbeat_interval_s=0, attempts=40, retry_pause_s=0.25)
    try:
        async with serving(create_app(settings)) as url:
            pusher = Pusher(replay, url, TOKEN, options)
            pushing = asyncio.create_task(
                pusher.push_window(NOW - timedelta(days=1), NOW)
            )
            # The receiver answers 503 until its broker is up.
            await asyncio.sleep(1.5)
            broker.start()
            await ensure_topics(settings, RAW_TOPICS)
            await asyncio.wait_for(pushing, 60)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(url + "/metrics")).text
        got = decoded(
            await read_topic(settings, settings.topic("raw", "position"), 104)
        )
    finally:
        broker.stop()

    assert pusher.records == Counter({("pushgps", "accepted"): 104})
    assert 'outcome="broker_unavailable"}' in metrics
    gps_times = Counter(json.loads(e["payload"])["gpsTime"] for _, e in got)
    # A batch refused with 503 may still have reached Kafka before the timeout,
    # so a retried record can be stored twice, but none is missing.
    assert len(gps_times) == 104


RAW_KIND_OF_PATH = {
    "pushgps": "position",
    "pushevent": "event",
    "pushhb": "heartbeat",
    "pushalarm": "alarm",
    "message": "alarm",
    "pushlbs": "lbs",
    "pushobd": "obd",
    "pushfaultinfo": "fault",
    "pushtem": "temperature",
    "pushoil": "fuel",
    "pushtripreport": "trip",
}


async def test_default_settings_push_every_path_and_each_cleans(
    receiver, make_settings, traces
):
    settings, url = receiver
    trace = traces["truck-B"]
    replay = history_replay([trace], NOW)
    pusher = pusher_from_settings(
        replay,
        make_settings(
            fake_push_url=url, webhook_push_token=TOKEN, fake_push_overspeed_kmh=40
        ),
    )

    await pusher.push_window(NOW - timedelta(days=1), NOW)
    # Within the extras interval nothing more is due; after it, one of each.
    await pusher.push_window(NOW, NOW + timedelta(seconds=30))
    await pusher.push_window(NOW + timedelta(seconds=30), NOW + timedelta(seconds=121))

    sent = Counter()
    for (path, outcome), n in pusher.records.items():
        assert outcome == "accepted", (path, outcome)
        sent[RAW_KIND_OF_PATH[path]] += n
    assert set(pusher.options.extras) == set(EXTRA_PATHS)
    assert {path for path, _ in pusher.records} == set(RAW_KIND_OF_PATH)
    for path in EXTRA_PATHS:
        assert pusher.records[(path, "accepted")] == 2, path
    router = Router(settings)
    for kind, count in sent.items():
        topic = settings.topic("raw", kind)
        messages = await read_topic(settings, topic, count)
        assert len(messages) == count, kind
        for message in messages:
            assert message.key == trace.imei.encode()
            payload = json.loads(codec("RawEvent").decode(message.value)["payload"])
            if kind not in ("position", "alarm"):
                assert payload["deviceImei"] == trace.imei and payload["gateTime"]
            out = router.route(
                topic, message.partition, message.offset, message.key, message.value
            )
            # Repeated fixes come back as None; nothing is dead-lettered.
            assert out is None or out.topic == settings.topic("clean", kind), (
                kind,
                payload,
                codec("DeadLetter").decode(out.value)["reason"] if out else None,
            )
    origins = {
        codec("RawEvent").decode(m.value)["origin"]
        for m in await read_topic(settings, settings.topic("raw", "alarm"), 3)
    }
    assert origins == {"pushalarm", "jimi.push.device.alarm"}
    trips = await read_topic(settings, settings.topic("raw", "trip"), 1)
    report = json.loads(codec("RawEvent").decode(trips[0].value)["payload"])
    assert report["startTime"] < report["endTime"] and report["distance"] > 1


def test_push_settings_refuse_unknown_paths_and_shapes(make_settings):
    replay = history_replay(load_traces(["denver-2"]), NOW)
    quiet = make_settings(
        fake_push_url="http://127.0.0.1:9", fake_push_paths="pushgps, /pushhb"
    )

    options = pusher_from_settings(replay, quiet).options

    assert (options.gps, options.events, options.overspeed_kmh) == (True, False, None)
    assert options.heartbeat_interval_s == 60 and options.extras == ()
    assert not options.trip_reports
    with pytest.raises(ConfigError, match="pushgsp"):
        options_from(make_settings(fake_push_paths="pushgsp"))
    with pytest.raises(ConfigError, match="sideways"):
        options_from(make_settings(fake_push_alarm_shape="sideways"))


async def test_fake_platform_command_pushes_every_kind_by_default(receiver):
    settings, url = receiver
    port = free_port()
    env = {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_FAKE_PLATFORM_PORT": str(port),
        "FLEETSTREAM_FAKE_PUSH_URL": url,
        "FLEETSTREAM_WEBHOOK_PUSH_TOKEN": TOKEN,
        "FLEETSTREAM_FAKE_SPEEDUP": "60",
        "FLEETSTREAM_FAKE_PUSH_INTERVAL_SECONDS": "0.5",
        "FLEETSTREAM_FAKE_PUSH_HEARTBEAT_INTERVAL_SECONDS": "2",
        "FLEETSTREAM_FAKE_PUSH_EXTRAS_INTERVAL_SECONDS": "2",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "fake-platform",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    kinds = set(RAW_KIND_OF_PATH.values())
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        while seen != kinds and time.monotonic() < deadline:
            for kind in kinds - seen:
                if await read_topic(settings, settings.topic("raw", kind), 1, 1):
                    seen.add(kind)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert seen == kinds, stderr.decode()[-2000:]
    assert process.returncode == 0
    assert "pusher stopped after" in stderr.decode()

"""The poll worker against the fake platform, the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from fakeplatform.openapi import EXPIRED_IMEI, FakeConfig
from fakeplatform.server import FakePlatform
from fakeplatform.traces import (
    Replay,
    format_platform_time,
    history_replay,
    is_valid_fix,
    load_traces,
)
from fleetstream.codec import codec
from fleetstream.db import create_pool
from fleetstream.embedded import EmbeddedBroker, free_port
from fleetstream.kafka import ensure_topics, make_consumer, make_producer
from producers.client import ApiError, IpLimitError, TracksolidClient, parse_time
from producers.poll import (
    ALARM_LIST,
    PARKING,
    PARKING_PAGINGS,
    TRACK_LIST,
    TRACK_MILEAGE,
    Poller,
    load_watermarks,
    run_poll,
    save_watermarks,
)
from producers.publish import RawPublisher

FAR = timedelta(days=30)


def poll_settings(make_settings, database_url, platform, **overrides):
    config = platform.api.config
    values = {
        "database_url": database_url,
        "tracksolid_base_url": platform.base_url,
        "tracksolid_app_key": config.app_key,
        "tracksolid_app_secret": config.app_secret,
        "tracksolid_user_id": config.user_id,
        "tracksolid_user_pwd_md5": config.user_pwd_md5,
        "tracksolid_target": config.user_id,
        "tracksolid_backoff_base_seconds": 0.1,
        "tracksolid_backoff_max_seconds": 0.5,
    }
    values.update(overrides)
    return make_settings(**values)


async def read_raw(settings, kind: str, idle_s: float = 1.0) -> list[dict]:
    """Return every RawEvent on a raw topic, with its key, oldest first per key.

    Reads until the topic stays quiet for ``idle_s``: the embedded broker
    reports wrong end offsets, so "read up to the end" cannot be asked of it.
    """
    consumer = make_consumer(
        settings, settings.topic("raw", kind), group_id=None, fetch_max_wait_ms=20
    )
    await consumer.start()
    events = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                for message in messages:
                    event = codec("RawEvent").decode(message.value)
                    events.append({**event, "key": message.key})
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return events


class Harness:
    """A Poller wired to real services, for tests that drive one job at a time."""

    async def start(self, settings):
        await ensure_topics(settings)
        self.pool = await create_pool(settings.database_url, max_size=4)
        self.client = TracksolidClient(settings, self.pool, worker="poll@test")
        self.producer = make_producer(settings)
        await self.producer.start()
        publisher = RawPublisher(self.producer, settings, "poll")
        self.poller = Poller(settings, self.client, self.pool, publisher)
        return self

    async def stop(self):
        await self.producer.stop()
        await self.client.aclose()
        await self.pool.close()


async def test_registry_and_locations_recover_omitted_devices(
    make_settings, database_url
):
    traces = load_traces(["truck-A", "truck-B", "denver-1"])
    imeis = {t.name: t.imei for t in traces}
    replay = Replay(traces, datetime.now(UTC) - timedelta(minutes=10))
    config = FakeConfig(
        child_accounts={"fleet_sub": [imeis["denver-1"]]},
        omit_imeis=[imeis["truck-B"]],
    )
    async with FakePlatform(config, replay) as platform:
        settings = poll_settings(make_settings, database_url, platform)
        harness = await Harness().start(settings)
        try:
            devices = await harness.poller.poll_devices()
            await harness.poller.poll_locations()
        finally:
            await harness.stop()

    everyone = {*imeis.values(), EXPIRED_IMEI}
    assert set(devices) == everyone
    assert harness.poller.accounts == ["fleet_demo_ke", "fleet_sub"]
    registry = await read_raw(settings, "device")
    assert {e["imei"] for e in registry} == everyone
    assert all(e["key"] == e["imei"].encode() for e in registry)
    assert all(e["source"] == "poll" for e in registry)
    assert {e["origin"] for e in registry} == {"jimi.user.device.list"}
    plates = {e["imei"]: json.loads(e["payload"])["vehicleNumber"] for e in registry}
    assert plates[imeis["truck-A"]] == "kza 123a"
    positions = await read_raw(settings, "position")
    by_imei = Counter(e["imei"] for e in positions)
    assert by_imei == Counter(everyone)
    got = {e["imei"]: e for e in positions}
    assert got[imeis["truck-B"]]["origin"] == "jimi.device.location.get"
    assert got[imeis["denver-1"]]["origin"] == "jimi.user.device.location.list"
    expired = json.loads(got[EXPIRED_IMEI]["payload"])
    assert (expired["lat"], expired["lng"], expired["expireFlag"]) == (0, 0, "0")
    assert json.loads(got[imeis["truck-A"]]["payload"])["posType"] == "GPS"
    # One response, one request id; different responses, different ids.
    main_list = [e for e in positions if e["imei"] in (imeis["truck-A"], EXPIRED_IMEI)]
    assert len({e["request_id"] for e in main_list}) == 1
    assert len({e["request_id"] for e in positions}) == 3


async def wait_for_marks(pool, imeis, at_least: datetime, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = await load_watermarks(pool, TRACK_LIST, imeis)
        if len(marks) == len(imeis) and min(marks.values()) >= at_least:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"watermarks did not reach {at_least} in {timeout} s")


async def test_restart_mid_window_leaves_no_gap(make_settings, database_url):
    traces = load_traces(["truck-A", "truck-B"])
    imeis = [t.imei for t in traces]
    speedup = 400.0
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=8)
    replay = Replay(traces, start, speedup=speedup, loop=False)
    last_delivery = max(
        replay.instant(t, 0, max(p.delivery_offset_s for p in t.points)) for t in traces
    )
    overlap = 3.0  # wall seconds; the latest delivery is 565 trace s = 1.4 s late
    async with FakePlatform(FakeConfig(include_expired_device=False), replay) as fake:
        settings = poll_settings(
            make_settings,
            database_url,
            fake,
            poll_tracks_interval_seconds=0.5,
            poll_tracks_overlap_seconds=overlap,
            poll_tracks_window_seconds=6.0,
            poll_locations_interval_seconds=60.0,
        )
        await ensure_topics(settings)
        pool = await create_pool(database_url, max_size=2)
        seeded = start - timedelta(seconds=1)
        await save_watermarks(pool, TRACK_LIST, imeis, seeded)

        first = asyncio.create_task(run_poll(settings, asyncio.Event()))
        await wait_for_marks(pool, imeis, start + timedelta(seconds=8), 40)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        crashed_at = len(fake.api.calls)
        await asyncio.sleep(1.5)
        stop = asyncio.Event()
        second = asyncio.create_task(run_poll(settings, stop))
        done = last_delivery + timedelta(seconds=overlap + 1)
        await wait_for_marks(pool, imeis, done, 60)
        stop.set()
        await second
        await pool.close()

    events = [
        e for e in await read_raw(settings, "position") if e["origin"] == TRACK_LIST
    ]
    published = Counter(
        (e["imei"], json.loads(e["payload"])["gpsTime"]) for e in events
    )
    expected = Counter(
        (t.imei, format_platform_time(gps))
        for t in traces
        for gps, point in replay.fixes(t.imei, start - FAR, start + FAR, start + FAR)
        if is_valid_fix(point)
    )
    assert set(published) == set(expected)
    assert any(c.method == TRACK_LIST for c in fake.api.calls[crashed_at:])

    windows: dict[str, list[tuple[datetime, datetime]]] = {i: [] for i in imeis}
    for call in fake.api.calls:
        if call.method == TRACK_LIST and call.code == 0:
            windows[call.params["imei"]].append(
                (
                    parse_time(call.params["begin_time"]),
                    parse_time(call.params["end_time"]),
                )
            )
    for imei, spans in windows.items():
        assert spans[0][0] <= seeded
        re_reads = 0
        for (_, prev_end), (begin, end) in zip(spans, spans[1:], strict=False):
            assert begin <= prev_end, "a gap between two windows"
            assert end - begin <= timedelta(seconds=6)
            if begin < prev_end - timedelta(seconds=overlap):
                re_reads += 1
        # Beyond the overlap, only the window in flight at the crash is read again.
        assert re_reads <= 1, imei
    for (imei, stamp), count in published.items():
        moment = parse_time(stamp)
        covering = sum(b <= moment <= e for b, e in windows[imei])
        assert expected[imei, stamp] <= count <= expected[imei, stamp] * covering


async def test_alarms_are_paged_and_a_repeated_page_stops(make_settings, database_url):
    traces = load_traces()
    now = datetime.now(UTC)
    replay = history_replay(traces, now)
    config = FakeConfig(include_expired_device=False, overspeed_kmh=30.0)
    async with FakePlatform(config, replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        begin = now - timedelta(hours=2)
        expected = sorted(
            (row["imei"], row["alertTime"], row["alertTypeId"])
            for t in traces
            for row in fake.api.alarms(t.imei, begin, now)
        )
        assert 100 < len(expected) < 1000, "the traces must give more than one page"
        harness = await Harness().start(settings)
        try:
            await harness.poller.poll_devices()
            await save_watermarks(
                harness.pool, ALARM_LIST, harness.poller.devices, begin
            )
            await harness.poller.poll_alarms()
            paged = await read_raw(settings, "alarm")
            pages = [
                c.params["page_no"] for c in fake.api.calls if c.method == ALARM_LIST
            ]

            fake.api.configure({"ignore_page_no": True})
            await harness.pool.execute(
                "UPDATE tracksolid.poll_watermarks SET watermark = $1", begin
            )
            calls_before = len(fake.api.calls)
            await harness.poller.poll_alarms()
            repeated = [
                c for c in fake.api.calls[calls_before:] if c.method == ALARM_LIST
            ]
        finally:
            await harness.stop()

    got = sorted(
        (
            e["imei"],
            json.loads(e["payload"])["alertTime"],
            json.loads(e["payload"])["alertTypeId"],
        )
        for e in paged
    )
    assert got == expected
    assert pages == [str(n) for n in range(1, len(expected) // 100 + 2)]
    assert all(e["key"] == e["imei"].encode() for e in paged)
    # A platform serving page 1 again is caught on the second call.
    assert [c.params["page_no"] for c in repeated] == ["1", "2"]
    again = await read_raw(settings, "alarm")
    assert len(again) == len(paged) + 100


async def test_trips_come_from_track_mileage(make_settings, database_url):
    traces = load_traces(["truck-B", "visnjan-car"])
    now = datetime.now(UTC)
    replay = history_replay(traces, now)
    async with FakePlatform(FakeConfig(include_expired_device=False), replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        harness = await Harness().start(settings)
        try:
            await harness.poller.poll_devices()
            begin = now - timedelta(hours=3)
            await save_watermarks(
                harness.pool, TRACK_MILEAGE, harness.poller.devices, begin
            )
            await harness.poller.poll_trips()
            marks = await load_watermarks(
                harness.pool, TRACK_MILEAGE, harness.poller.devices
            )
        finally:
            await harness.stop()

    trips = await read_raw(settings, "trip")
    assert {e["imei"] for e in trips} == {t.imei for t in traces}
    assert all(e["origin"] == TRACK_MILEAGE for e in trips)
    rows = [json.loads(e["payload"]) for e in trips]
    assert all(r["startTime"] < r["endTime"] for r in rows)
    for trace in traces:
        assert sum(r["distance"] for r in rows if r["imei"] == trace.imei) > 1.0
    assert all(m > now - timedelta(seconds=5) for m in marks.values())


@pytest.mark.parametrize("window", [600.0, 7 * 86400.0])
def test_windows_never_exceed_the_limit_and_always_advance(window):
    from producers.poll import next_window

    overlap = timedelta(seconds=7200)
    mark = datetime(2025, 3, 1, tzinfo=UTC)
    limit = mark + timedelta(days=20)
    longest = timedelta(seconds=window)
    spans = []
    while mark < limit:
        begin, end = next_window(mark, limit, overlap, longest)
        spans.append((begin, end))
        assert end > mark and end - begin <= longest and begin <= mark
        mark = end
    assert spans[-1][1] == limit


async def test_backfill_resumes_without_gaps_or_duplicates(
    make_settings, database_url, caplog
):
    from producers.backfill import run_backfill

    traces = load_traces(["truck-B", "visnjan-car"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay(traces, now - timedelta(days=3))
    config = FakeConfig(
        include_expired_device=False,
        fail_methods=[TRACK_LIST],
        fail_code=1005,
        fail_every=3,
    )
    imeis = [t.imei for t in traces]
    async with FakePlatform(config, replay) as fake:
        settings = poll_settings(
            make_settings, database_url, fake, backfill_call_interval_seconds=0.0
        )
        await ensure_topics(settings)
        begin = now - timedelta(days=15)
        with pytest.raises(IpLimitError):
            await run_backfill(settings, begin, now, imeis)
        first_run = len(fake.api.calls)
        fake.api.configure({"fail_every": 0})
        caplog.set_level("INFO", logger="producers.backfill")

        outcome = await run_backfill(settings, begin, now, imeis)

    assert (outcome.windows_total, outcome.windows_skipped) == (7, 2)
    assert outcome.windows_done == 5
    tracks = [
        (c.params["imei"], c.params["begin_time"])
        for c in fake.api.calls
        if c.method == TRACK_LIST and c.code == 0
    ]
    assert len(tracks) == len(set(tracks)) == 6, "no window is fetched twice"
    assert not any(c.method == ALARM_LIST for c in fake.api.calls[:first_run])
    events = await read_raw(settings, "position")
    assert {e["source"] for e in events} == {"backfill"}
    published = Counter(
        (e["imei"], json.loads(e["payload"])["gpsTime"]) for e in events
    )
    expected = Counter(
        (t.imei, format_platform_time(gps))
        for t in traces
        for gps, point in replay.fixes(t.imei, begin, now, now)
        if is_valid_fix(point)
    )
    assert published == expected
    progress = [r.getMessage() for r in caplog.records if "windows/min" in r.message]
    assert progress and progress[-1].split(": ")[1].startswith("7/7 windows")


def command_env(settings, fake) -> dict[str, str]:
    """Return the environment that points a ``fleetstream`` command at the test."""
    config = fake.api.config
    return {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "DATABASE_URL": settings.database_url,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "FLEETSTREAM_TRACKSOLID_BASE_URL": fake.base_url,
        "FLEETSTREAM_TRACKSOLID_APP_KEY": config.app_key,
        "FLEETSTREAM_TRACKSOLID_APP_SECRET": config.app_secret,
        "FLEETSTREAM_TRACKSOLID_USER_ID": config.user_id,
        "FLEETSTREAM_TRACKSOLID_USER_PWD_MD5": config.user_pwd_md5,
    }


async def test_poll_command_runs_until_sigterm(make_settings, database_url):
    traces = load_traces(["truck-B"])
    replay = Replay(traces, datetime.now(UTC) - timedelta(minutes=5))
    async with FakePlatform(FakeConfig(), replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        await ensure_topics(settings)
        env = command_env(settings, fake)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetstream.cli",
            "poll",
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            methods = {c.method for c in fake.api.calls if c.code == 0}
            if {TRACK_LIST, TRACK_MILEAGE, ALARM_LIST} <= methods:
                break
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "poll worker stopped" in stderr.decode()
    assert {TRACK_LIST, TRACK_MILEAGE, ALARM_LIST} <= methods
    kinds = Counter(e["origin"] for e in await read_raw(settings, "position"))
    assert kinds["jimi.user.device.location.list"] >= 1
    assert kinds[TRACK_LIST] > 0


async def test_watermark_stays_when_kafka_refuses_the_records(
    make_settings, database_url
):
    traces = load_traces(["truck-B"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay(traces, now)
    async with FakePlatform(FakeConfig(include_expired_device=False), replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        harness = await Harness().start(settings)
        # A real producer whose requests the client must refuse: every record
        # is larger than the allowed request size.
        await harness.producer.stop()
        harness.producer = make_producer(settings, max_request_size=64)
        await harness.producer.start()
        harness.poller.publisher = RawPublisher(harness.producer, settings, "poll")
        harness.poller.devices = [traces[0].imei]
        seeded = now - timedelta(hours=3)
        await save_watermarks(harness.pool, TRACK_LIST, harness.poller.devices, seeded)
        try:
            with pytest.raises(KafkaError):
                await harness.poller.poll_tracks()
            marks = await load_watermarks(harness.pool, TRACK_LIST, [traces[0].imei])
        finally:
            await harness.stop()

    assert marks == {traces[0].imei: seeded}
    assert any(c.method == TRACK_LIST and c.code == 0 for c in fake.api.calls)


async def test_parking_and_idling_reports_are_published(make_settings, database_url):
    traces = load_traces(["truck-A", "truck-B"])
    now = datetime.now(UTC)
    replay = history_replay(traces, now)
    async with FakePlatform(FakeConfig(include_expired_device=False), replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        harness = await Harness().start(settings)
        try:
            await harness.poller.poll_devices()
            begin = now - timedelta(hours=3)
            await save_watermarks(harness.pool, PARKING, harness.poller.devices, begin)
            await harness.poller.poll_parking()
        finally:
            await harness.stop()

    events = await read_raw(settings, "parking")
    rows = [json.loads(e["payload"]) for e in events]
    assert rows and {r["acc"] for r in rows} == {"on"}
    assert {e["imei"] for e in events} == {t.imei for t in traces}
    assert all(r["startTime"].endswith("Z") for r in rows)
    calls = [c.params for c in fake.api.calls if c.method == PARKING]
    assert [c["acc_type"] for c in calls] == ["off", "on"]
    assert all(c["start_row"] == "0" and c["account"] == "fleet_demo_ke" for c in calls)


async def test_backfill_command_reports_progress(make_settings, database_url):
    traces = load_traces(["visnjan-car"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay(traces, now - timedelta(days=1))
    async with FakePlatform(FakeConfig(), replay) as fake:
        settings = poll_settings(make_settings, database_url, fake)
        await ensure_topics(settings)
        env = {
            **command_env(settings, fake),
            "FLEETSTREAM_BACKFILL_CALL_INTERVAL_SECONDS": "0",
        }
        start = (now - timedelta(days=9)).strftime("%Y-%m-%dT%H:%M:%SZ")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetstream.cli",
            "backfill",
            "--from",
            start,
            "--to",
            format_platform_time(now),
            "--imei",
            traces[0].imei,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    log = stderr.decode()
    assert process.returncode == 0, log[-2000:]
    assert "3/3 windows" in log and "windows/min" in log
    events = await read_raw(settings, "position")
    assert len(events) == sum(is_valid_fix(p) for p in traces[0].points)
    assert {e["source"] for e in events} == {"backfill"}


async def test_alarm_window_over_the_row_cap_is_split(make_settings, database_url):
    traces = load_traces(["truck-A", "truck-B"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = Replay(traces, now - timedelta(days=3), loop=True)
    config = FakeConfig(include_expired_device=False, overspeed_kmh=30.0)
    async with FakePlatform(config, replay) as fake:
        # A moving platform clock delivers late fixes between computing the
        # expected rows and polling them; standing still, both see the same.
        fake.api.wall = lambda: now
        settings = poll_settings(make_settings, database_url, fake)
        begin, end = now - timedelta(days=2), now - timedelta(seconds=1)
        expected = sorted(
            (row["imei"], row["alertTime"], row["alertTypeId"])
            for t in traces
            for row in fake.api.alarms(t.imei, begin, end)
        )
        assert len(expected) > 1000, "the window must exceed the platform's cap"
        harness = await Harness().start(settings)
        try:
            published = await harness.poller.alarm_window(
                [t.imei for t in traces], begin, end
            )
        finally:
            await harness.stop()

    events = await read_raw(settings, "alarm")
    got = sorted(
        (
            e["imei"],
            *(json.loads(e["payload"])[k] for k in ("alertTime", "alertTypeId")),
        )
        for e in events
    )
    assert published == len(events)
    assert got == expected
    spans = {
        (c.params["begin_time"], c.params["end_time"])
        for c in fake.api.calls
        if c.method == ALARM_LIST
    }
    assert len(spans) >= 3, "the full window, then at least its two halves"


@pytest.mark.parametrize("overlap_s", [600.0, 0.0])
async def test_overlap_catches_points_delivered_late(
    make_settings, database_url, overlap_s
):
    traces = load_traces(["truck-B"])
    imei = traces[0].imei
    start = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    replay = Replay(traces, start, loop=False)
    virtual = [start]
    config = FakeConfig(include_expired_device=False, timestamp_tolerance_seconds=1e9)
    async with FakePlatform(config, replay) as fake:
        fake.api.wall = lambda: virtual[0]
        settings = poll_settings(
            make_settings, database_url, fake, poll_tracks_overlap_seconds=overlap_s
        )
        harness = await Harness().start(settings)
        harness.poller.clock = lambda: virtual[0]
        harness.poller.devices = [imei]
        await save_watermarks(harness.pool, TRACK_LIST, [imei], start)
        try:
            # Poll once a minute, on the fake's clock, through the whole trace.
            while virtual[0] < start + timedelta(seconds=traces[0].duration_s + 700):
                virtual[0] += timedelta(seconds=60)
                await harness.poller.poll_tracks()
        finally:
            await harness.stop()

    events = await read_raw(settings, "position")
    published = {json.loads(e["payload"])["gpsTime"] for e in events}
    expected = {
        format_platform_time(gps)
        for gps, point in replay.fixes(imei, start, start + FAR, start + FAR)
        if is_valid_fix(point)
    }
    if overlap_s:
        assert published == expected
    else:
        # Without overlap, fixes that arrive after their minute was read are lost.
        assert published < expected and len(expected - published) >= 5


async def test_parking_paging_falls_back_when_the_platform_refuses_it(
    make_settings, database_url
):
    traces = load_traces(["truck-A", "truck-B"])
    imeis = [t.imei for t in traces]
    now = datetime.now(UTC).replace(microsecond=0)
    replay = Replay(traces, now - timedelta(days=3), loop=True)
    # Rows count from 1 here, and the first two pagings are refused.
    config = FakeConfig(
        include_expired_device=False,
        parking_row_base=1,
        parking_refused_pagings=[[0, 100], [1, 100]],
    )
    async with FakePlatform(config, replay) as fake:
        # The platform's clock stands still, so expected rows and polled rows
        # come from the same deliveries.
        fake.api.wall = lambda: now
        settings = poll_settings(make_settings, database_url, fake)
        begin, end = now - timedelta(days=2), now - timedelta(seconds=1)
        expected = Counter(
            json.dumps(row, sort_keys=True)
            for imei in imeis
            for row in fake.api.parkings(imei, begin, end)
        )
        harness = await Harness().start(settings)
        try:
            published = await harness.poller.parking_window(imeis, begin, end)
            chosen = PARKING_PAGINGS[harness.poller.parking_paging]
            fake.api.configure(
                {"parking_refused_pagings": [list(p) for p in PARKING_PAGINGS]}
            )
            with pytest.raises(ApiError) as refused:
                await harness.poller.parking_window(imeis, begin, end)
            paging_after = harness.poller.parking_paging
        finally:
            await harness.stop()

    assert sum(expected.values()) > 50, "the rows must need more than one page"
    events = await read_raw(settings, "parking")
    got = Counter(json.dumps(json.loads(e["payload"]), sort_keys=True) for e in events)
    assert published == sum(expected.values())
    assert got == expected
    assert chosen == (1, 50)
    calls = [
        (c.params["acc_type"], c.params["start_row"], c.params["page_size"], c.code)
        for c in fake.api.calls
        if c.method == PARKING
    ]
    first_run = calls[: len(calls) - 3]
    # Each refused paging is asked once; the accepted one is kept for "on".
    assert [c for c in first_run if c[3] == 1001] == [
        ("off", "0", "100", 1001),
        ("off", "1", "100", 1001),
    ]
    on_rows = sum('"acc": "on"' in row for row in expected.elements())
    on_starts = [int(c[1]) for c in first_run if c[0] == "on"]
    assert on_starts == list(range(1, on_rows + 1, 50))
    assert refused.value.code == 1001
    # Every paging was tried once more, the accepted one first, and stays chosen.
    assert [c[1:] for c in calls[-3:]] == [
        ("1", "50", 1001),
        ("0", "100", 1001),
        ("1", "100", 1001),
    ]
    assert PARKING_PAGINGS[paging_after] == (1, 50)


async def test_no_secret_reaches_the_ingestion_log_or_the_logs(
    make_settings, database_url, caplog
):
    traces = load_traces(["truck-A", "truck-B"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay(traces, now)
    config = FakeConfig(include_expired_device=False, token_expires_in_seconds=3600)
    caplog.set_level(logging.DEBUG)
    async with FakePlatform(config, replay) as fake:
        settings = poll_settings(
            make_settings, database_url, fake, backfill_call_interval_seconds=0
        )
        harness = await Harness().start(settings)
        try:
            await harness.poller.poll_devices()
            await harness.poller.poll_locations()
            await harness.poller.poll_history()
            # The token expires: a 1004, then a refresh with the refresh token.
            fake.api.configure({"advance_clock_seconds": 4000})
            await harness.poller.poll_locations()
            # Busy answers and a refused paging write their messages to the log.
            fake.api.configure(
                {"fail_next": 2, "fail_code": -1, "parking_refused_pagings": [[0, 100]]}
            )
            await harness.poller.poll_history()
            await harness.poller.parking_window(
                harness.poller.devices, now - timedelta(hours=2), now
            )
            # The refresh itself is refused: a new token from the password.
            fake.api.configure({"advance_clock_seconds": 4000, "refresh_fails": True})
            await harness.poller.poll_locations()
        finally:
            await harness.stop()
        from producers.backfill import run_backfill

        await run_backfill(
            settings, now - timedelta(hours=2), now, [traces[0].imei], asyncio.Event()
        )

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT row_to_json(l)::text AS line, result_code"
            " FROM tracksolid.ingestion_log l"
        )
    finally:
        await conn.close()
    secrets = {
        settings.tracksolid_app_secret.get_secret_value(),
        settings.tracksolid_user_pwd_md5.get_secret_value(),
        *fake.api.issued,
    }
    assert len(fake.api.issued) == 6, "get, refresh and get again"
    codes = Counter(row["result_code"] for row in rows)
    assert codes[1004] >= 2 and codes[-1] == 2 and codes[1001] >= 1
    assert any("oauth.token.refresh" in row["line"] for row in rows)
    logs = [
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}"
        for r in caplog.records
    ]
    assert len(logs) > 100, "aiokafka, httpx and our own DEBUG lines"
    for secret in secrets:
        assert len(secret) >= 16
        assert not [row["line"] for row in rows if secret in row["line"]]
        assert not [line for line in logs if secret in line]


async def test_backfill_stops_promptly_while_the_platform_is_busy(
    make_settings, database_url
):
    from producers.backfill import run_backfill

    traces = load_traces(["truck-B"])
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay(traces, now)
    config = FakeConfig(
        include_expired_device=False,
        fail_code=-1,
        fail_next=1000,
        fail_methods=[TRACK_LIST],
    )
    async with FakePlatform(config, replay) as fake:
        settings = poll_settings(
            make_settings,
            database_url,
            fake,
            tracksolid_backoff_base_seconds=60,
            tracksolid_backoff_max_seconds=60,
        )
        await ensure_topics(settings)
        stop = asyncio.Event()
        running = asyncio.create_task(
            run_backfill(
                settings, now - timedelta(hours=3), now, [traces[0].imei], stop
            )
        )
        while not any(c.method == TRACK_LIST for c in fake.api.calls):
            await asyncio.sleep(0.05)
        stop.set()
        stopped = time.monotonic()
        outcome = await asyncio.wait_for(running, 10)
        took = time.monotonic() - stopped

    # The client was waiting out a back-off of 30 s or more when stop came.
    assert took < 3
    assert outcome.windows_done == 0 and outcome.records == 0
    pool = await create_pool(settings.database_url)
    try:
        progress = await pool.fetchval(
            "SELECT count(*) FROM tracksolid.backfill_progress"
        )
    finally:
        await pool.close()
    assert progress == 0


async def test_a_broken_producer_fails_fast_and_is_replaced(
    make_settings, database_url
):
    traces = load_traces(["truck-A", "truck-B"])
    replay = Replay(traces, datetime.now(UTC) - timedelta(minutes=10))
    async with FakePlatform(FakeConfig(include_expired_device=False), replay) as fake:
        settings = poll_settings(
            make_settings, database_url, fake, kafka_request_timeout_ms=1000
        )
        harness = await Harness().start(settings)
        publisher = RawPublisher(harness.producer, settings, "poll", replaceable=True)
        harness.poller.publisher = publisher
        try:
            await harness.poller.poll_devices()
            # Stopped under the publisher, the producer can never deliver again.
            wedged = harness.producer
            await wedged.stop()
            failures = []
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises((TimeoutError, KafkaError)):
                    await harness.poller.poll_locations()
                failures.append(time.monotonic() - started)
            published = await harness.poller.poll_locations()
        finally:
            harness.producer = publisher.producer
            await harness.stop()

    assert all(seconds < 5 for seconds in failures), failures
    assert publisher.producer is not wedged and publisher.restarts == 1
    assert published == len(traces)
    positions = await read_raw(settings, "position")
    assert Counter(e["imei"] for e in positions) == Counter(t.imei for t in traces)


async def test_poll_worker_started_before_its_broker_waits_for_it(
    make_settings, database_url, state_dir
):
    broker = EmbeddedBroker(free_port(), state_dir / "poll-late-tansu.log")
    traces = load_traces(["truck-B"])
    replay = Replay(traces, datetime.now(UTC) - timedelta(minutes=10))
    try:
        async with FakePlatform(
            FakeConfig(include_expired_device=False), replay
        ) as fake:
            settings = poll_settings(
                make_settings,
                database_url,
                fake,
                kafka_bootstrap_servers=broker.bootstrap_servers,
                broker_profile="embedded",
            )
            stop = asyncio.Event()
            polling = asyncio.create_task(run_poll(settings, stop))
            await asyncio.sleep(2)
            assert not polling.done()
            broker.start()
            await ensure_topics(settings)
            deadline = time.monotonic() + 30
            registry = []
            while not registry and time.monotonic() < deadline:
                registry = await read_raw(settings, "device", idle_s=0.5)
            stop.set()
            await asyncio.wait_for(polling, 30)
    finally:
        broker.stop()

    assert [e["imei"] for e in registry] == [traces[0].imei]


async def test_stray_elements_of_a_response_are_published_not_dropped(
    make_settings, database_url
):
    traces = load_traces(["truck-B"])
    imei = traces[0].imei
    now = datetime.now(UTC).replace(microsecond=0)
    stray = [5, None, "row", [1]]
    config = FakeConfig(
        include_expired_device=False,
        stray_rows={TRACK_LIST: stray, "jimi.user.device.list": [7]},
    )
    async with FakePlatform(config, history_replay(traces, now)) as fake:
        fake.api.wall = lambda: now
        settings = poll_settings(make_settings, database_url, fake)
        harness = await Harness().start(settings)
        try:
            devices = await harness.poller.poll_devices()
            await save_watermarks(
                harness.pool, TRACK_LIST, devices, now - timedelta(hours=1)
            )
            published = await harness.poller.poll_tracks()
        finally:
            await harness.stop()

    assert devices == [imei]
    assert [c.code for c in fake.api.calls if c.method == TRACK_LIST] == [0]
    events = await read_raw(settings, "position")
    payloads = [json.loads(e["payload"]) for e in events]
    strays = [p for p in payloads if not isinstance(p, dict)]
    # Track points name no device: the window's IMEI keys them, strays too.
    assert sorted(map(json.dumps, strays)) == sorted(map(json.dumps, stray))
    assert all(e["key"] == imei.encode() for e in events)
    fixes = [p for p in payloads if isinstance(p, dict)]
    assert fixes and all(p["gpsTime"] for p in fixes)
    assert published == len(events) == len(fixes) + len(stray)
    registry = await read_raw(settings, "device")
    unkeyed = [e for e in registry if e["imei"] is None]
    assert [(e["payload"], e["key"]) for e in unkeyed] == [("7", None)]


async def test_odd_values_are_published_as_valid_json(make_settings):
    settings = make_settings()
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    records = [
        {"imei": "860001000000011", "deviceName": "KZZ \ud83d 1"},
        {"imei": "86000100000\udfff12", "deviceName": "x"},
        {"imei": "860001000000013", "deviceName": "Zoë"},
        # What a lenient JSON parser lets in from a response.
        {"imei": "860001000000014", "mileage": float("nan"), "odo": float("-inf")},
    ]
    try:
        publisher = RawPublisher(producer, settings, "poll")
        published = await publisher.publish(
            "jimi.user.device.list", records, request_id="r1"
        )
    finally:
        await producer.stop()

    events = await read_raw(settings, "device")
    assert published == len(events) == 4
    by_key = {e["key"]: e for e in events}
    assert json.loads(by_key[b"860001000000011"]["payload"]) == records[0]
    assert "Zoë" in by_key[b"860001000000013"]["payload"]
    assert by_key[None]["imei"] is None
    assert json.loads(by_key[None]["payload"]) == records[1]
    strict = json.loads(
        by_key[b"860001000000014"]["payload"], parse_constant=pytest.fail
    )
    assert strict == {"imei": "860001000000014", "mileage": "NaN", "odo": "-Infinity"}

"""A real truck trace through every stage, each stage its own process.

The fake platform serves the recording of truck-B (placed so that it ends now)
through the Open API and pushes the same fixes to the webhook receiver, so each
fix reaches the pipeline up to three times (track history, live location,
push), with the recording's own duplicates and late deliveries. The database
must end up with exactly one row per distinct valid fix, and the API must
answer with them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from fakeplatform.openapi import FakeConfig
from fakeplatform.pusher import Pusher
from fakeplatform.server import FakePlatform
from fakeplatform.traces import expected_fixes, history_replay, load_traces
from fleetstream.embedded import free_port, wait_for_port
from fleetstream.kafka import ensure_topics

STAGES = ("api", "sink", "process", "webhook", "poll")
DEADLINE_SECONDS = 120


def start_stage(name: str, env: dict[str, str], log_dir) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed by the OS
    return subprocess.Popen(
        [sys.executable, "-m", "fleetstream.cli", name],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_stages(processes: dict[str, subprocess.Popen]) -> dict[str, int]:
    codes = {}
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        try:
            codes[name] = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
    return codes


async def wait_for_rows(url: str, imei: str, want: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        count = 0
        while time.monotonic() < deadline:
            count = await conn.fetchval(
                "SELECT count(*) FROM tracksolid.position_history WHERE imei = $1",
                imei,
            )
            ready = await conn.fetchval(
                "SELECT count(*) FROM tracksolid.devices WHERE imei = $1", imei
            )
            if count >= want and ready:
                return count
            await asyncio.sleep(0.5)
        return count
    finally:
        await conn.close()


@pytest.fixture
def truck_b():
    (trace,) = load_traces(["truck-B"])
    return trace


async def test_truck_trace_through_every_stage(
    make_settings, database_url, truck_b, tmp_path
):
    now = datetime.now(UTC).replace(microsecond=0)
    replay = history_replay([truck_b], now)
    fake = await FakePlatform(FakeConfig(include_expired_device=False), replay).start()
    settings = make_settings(
        database_url=database_url,
        tracksolid_base_url=fake.base_url,
        tracksolid_target=FakeConfig().user_id,
        tracksolid_user_id=FakeConfig().user_id,
        tracksolid_app_key=FakeConfig().app_key,
        tracksolid_app_secret=FakeConfig().app_secret,
        tracksolid_user_pwd_md5=FakeConfig().user_pwd_md5,
        poll_tracks_overlap_seconds=3 * 3600,
        poll_locations_interval_seconds=5,
        poll_tracks_interval_seconds=5,
        api_port=free_port(),
        webhook_port=free_port(),
        webhook_host="127.0.0.1",
        api_host="127.0.0.1",
        vtrips_refresh_interval_seconds=5,
    )
    await ensure_topics(settings)
    processes = {
        name: start_stage(name, settings.to_env(), tmp_path) for name in STAGES
    }
    try:
        wait_for_port("127.0.0.1", settings.webhook_port, timeout=60)
        pusher = Pusher(
            replay,
            f"http://127.0.0.1:{settings.webhook_port}",
            settings.webhook_push_token.get_secret_value(),
        )
        await pusher.push_window(now - timedelta(days=1), now)
        pushed = sum(
            n for (_, outcome), n in pusher.records.items() if outcome == "accepted"
        )

        fixes = expected_fixes(truck_b)
        stored = await wait_for_rows(database_url, truck_b.imei, len(fixes))
        await asyncio.sleep(3)  # anything still in flight would now show as extra
        conn = await asyncpg.connect(database_url)
        try:
            times = await conn.fetch(
                "SELECT gps_time FROM tracksolid.position_history WHERE imei=$1",
                truck_b.imei,
            )
            live = await conn.fetchrow(
                "SELECT gps_time, lat, lng FROM tracksolid.live_positions "
                "WHERE imei=$1",
                truck_b.imei,
            )
        finally:
            await conn.close()

        start = replay.instant(truck_b, 0, 0.0)
        want = {start + timedelta(seconds=offset) for offset in fixes}
        assert pushed >= len(fixes)
        assert stored == len(fixes)
        assert {row["gps_time"] for row in times} == want
        assert live["gps_time"] == max(want)

        base = f"http://127.0.0.1:{settings.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
            wait_for_port("127.0.0.1", settings.api_port, timeout=30)
            fleet = (await api.get("/webhook/live-positions")).json()
            plate = truck_b.plate.lower().replace(" ", "")
            track = await api.get(
                "/webhook/live-positions/track",
                params={"vehicle_number": plate, "hours": 2},
            )
        (vehicle,) = [v for v in fleet if v["imei"] == truck_b.imei]
        points = track.json()["points"]
        point_times = [p["gps_time"] for p in points]
        last = max(want).isoformat().replace("+00:00", "Z")

        assert vehicle["vehicle_number"] == truck_b.plate
        assert (vehicle["lat"], vehicle["lng"]) == (live["lat"], live["lng"])
        assert vehicle["gps_time"] == last
        assert {"speed", "acc"} <= set(vehicle)
        assert track.status_code == 200
        assert len(points) == len(fixes)
        assert point_times == sorted(point_times)
        assert point_times[-1] == last
    finally:
        codes = stop_stages(processes)
        await fake.stop()
        logs = {
            p.stem: p.read_text(errors="replace")[-3000:]
            for p in tmp_path.glob("*.log")
        }
    assert all(code == 0 for code in codes.values()), (codes, logs)

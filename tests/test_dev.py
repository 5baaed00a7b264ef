"""``fleetstream dev`` (what ``make dev`` runs), as a newcomer would use it.

It starts its own broker and database under a fresh state folder, so this test
exercises the embedded start-up path as well as every stage. Within 90 seconds
the API must list every replayed vehicle, their positions must move as the
replay goes on, a track must come back in time order, and the live map must
show a marker per vehicle. Ctrl-C (SIGINT) must stop everything cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
from test_maps_browser import dump_dom, markers

from fakeplatform.traces import load_traces
from fleetstream.embedded import free_port

STARTUP_BUDGET_SECONDS = 90


def get_json(url: str):
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_for_fleet(base: str, imeis: set[str], deadline: float) -> list[dict]:
    fleet: list[dict] = []
    while time.monotonic() < deadline:
        fleet = get_json(f"{base}/webhook/live-positions") or []
        if imeis <= {v["imei"] for v in fleet if v["vehicle_number"]}:
            return fleet
        time.sleep(1)
    return fleet


@pytest.fixture
def tmp_path():
    # Not pytest's tmp_path: the database server runs as another user and must
    # reach its folder, and pytest keeps its base folder private to root.
    path = Path(tempfile.mkdtemp(prefix="fs-dev-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_make_dev_serves_moving_vehicles_within_90_seconds(tmp_path):
    ports = {name: free_port() for name in ("api", "webhook", "fake", "broker", "pg")}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
        and not key.startswith("FLEETSTREAM_")
    }
    env.update(
        FLEETSTREAM_STATE_DIR=str(tmp_path / "state"),
        FLEETSTREAM_API_PORT=str(ports["api"]),
        FLEETSTREAM_WEBHOOK_PORT=str(ports["webhook"]),
        FLEETSTREAM_FAKE_PLATFORM_PORT=str(ports["fake"]),
        FLEETSTREAM_DEV_BROKER_PORT=str(ports["broker"]),
        FLEETSTREAM_DEV_POSTGRES_PORT=str(ports["pg"]),
    )
    started = time.monotonic()
    dev = subprocess.Popen(
        [sys.executable, "-m", "fleetstream.cli", "dev"],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "dev.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{ports['api']}"
    imeis = {trace.imei for trace in load_traces()}
    try:
        fleet = wait_for_fleet(base, imeis, started + STARTUP_BUDGET_SECONDS)
        ready_after = time.monotonic() - started
        shown = {vehicle["imei"] for vehicle in fleet}
        assert imeis <= shown, (sorted(imeis - shown), log_tail(tmp_path))

        first = {v["imei"]: (v["lat"], v["lng"], v["gps_time"]) for v in fleet}
        time.sleep(15)
        later = {
            v["imei"]: (v["lat"], v["lng"], v["gps_time"])
            for v in get_json(f"{base}/webhook/live-positions")
        }
        moved = {imei for imei in imeis if later[imei] != first[imei]}
        some = next(v for v in fleet if v["imei"] in imeis and v["vehicle_number"])
        track = get_json(
            f"{base}/webhook/live-positions/track"
            f"?vehicle_number={some['vehicle_number']}&hours=1"
        )
        page = dump_dom(f"{base}/map/live")
        on_map = markers(page, "vehicle")

        assert ready_after < STARTUP_BUDGET_SECONDS
        assert len(moved) >= len(imeis) - 1, (first, later)
        times = [point["gps_time"] for point in track["points"]]
        assert len(times) > 1 and times == sorted(times)
        assert imeis <= set(on_map)
        assert on_map[some["imei"]]["data-plate"] == some["vehicle_number"]
    finally:
        children = psutil.Process(dev.pid).children(recursive=True)
        dev.send_signal(signal.SIGINT)
        code = dev.wait(90)
    left = [child.cmdline() for child in children if child.is_running()]
    left += [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert code == 0, log_tail(tmp_path)
    assert len(children) >= 7  # broker and the six stages
    assert left == []


def log_tail(tmp_path) -> str:
    return (tmp_path / "dev.log").read_text(errors="replace")[-4000:]

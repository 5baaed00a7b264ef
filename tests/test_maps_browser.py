"""The map pages in headless Chromium, served by ``fleetstream api`` on a free port.

Chromium renders each page with virtual time (scripts, fetches and polling run,
no real waiting) and prints the resulting DOM, whose marker elements carry the
vehicle's IMEI, plate and coordinates as data attributes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import aiohttp  # installed with faust-streaming; its WebSocket client speaks DevTools
import asyncpg
import httpx
import pytest

from fleetstream.embedded import free_port

VEHICLES = [
    # imei, plate, lat, lng, ignition
    ("860000000000011", "KZA-123A", -1.2921, 36.8219, True),
    ("860000000000012", "KBX 456B", -1.3005, 36.7801, False),
    ("860000000000013", "KCC.789C", -4.0435, 39.6682, None),
]
DEVTOOLS_CALLS = itertools.count(1)
# Its last fix is two hours old: offline, drawn faded.
STALE_IMEI = "860000000000013"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=8000",
]


class Elements(HTMLParser):
    """Collect markers (elements with ``data-imei``), map tiles and ids."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []
        self.tiles: list[str] = []
        self.by_id: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if "data-imei" in attributes:
            self.found.append(attributes)
        if tag == "img" and "leaflet-tile" in attributes.get("class", ""):
            self.tiles.append(attributes.get("src", ""))
        if "id" in attributes:
            self.by_id[attributes["id"]] = attributes


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is missing: `make browser` installs it from apt"
    return path


def browser_profile() -> tempfile.TemporaryDirectory:
    """A fresh Chromium profile folder.

    Chromium's helper processes can still be writing into it for a moment after
    the browser exits; a folder left in /tmp then is not the test's failure.
    """
    return tempfile.TemporaryDirectory(
        prefix="fs-chromium-", ignore_cleanup_errors=True
    )


def dump_dom(url: str) -> Elements:
    with browser_profile() as profile:
        done = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    page = Elements()
    page.feed(done.stdout)
    return page


def markers(page: Elements, css_class: str) -> dict[str, dict[str, str]]:
    return {
        e["data-imei"]: e for e in page.found if css_class in e.get("class", "").split()
    }


async def seed(url: str, now: datetime) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO tracksolid.devices (imei, vehicle_number) VALUES ($1, $2)",
            [(imei, plate) for imei, plate, *_ in VEHICLES],
        )
        await conn.executemany(
            "INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng,"
            " speed_kmh, acc_on, source, origin, received_at)"
            " VALUES ($1, $2, $3, $4, 20, $5, 'poll', 'test', now())",
            [
                (
                    imei,
                    now - timedelta(hours=2 if imei == STALE_IMEI else 0),
                    lat,
                    lng,
                    acc,
                )
                for imei, _, lat, lng, acc in VEHICLES
            ],
        )
        await conn.executemany(
            "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng,"
            " source, origin, received_at)"
            " VALUES ($1, $2, $3, $4, 'poll', 'test', now())",
            [
                (
                    "860000000000011",
                    now - timedelta(minutes=m),
                    -1.2921 + m / 1000,
                    36.8,
                )
                for m in (40, 30, 20, 10)
            ],
        )
        # Not refreshed here: the fleet map shows these only once the API's own
        # refresh loop has filled reporting.v_trips.
        await conn.executemany(
            "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time,"
            " start_lat, start_lng, end_lat, end_lng, distance_km, duration_s, source)"
            " VALUES ($1, $2, $3, $4, -1.29, 36.82, $5, 36.9, 7.5, 900, 'stream')",
            [
                ("trip-a", "860000000000011", now - timedelta(days=1, hours=2),
                 now - timedelta(days=1, hours=1), -1.25),
                ("trip-b", "860000000000012", now - timedelta(days=2, hours=2),
                 now - timedelta(days=2, hours=1), -1.21),
            ],
        )  # fmt: skip
    finally:
        await conn.close()


@pytest.fixture
async def api_url(request, settings):
    """Yield the URL of the API serving the seeded fleet; a param adds settings."""
    await seed(settings.database_url, datetime.now(UTC).replace(microsecond=0))
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_API_HOST": "127.0.0.1",
        "FLEETSTREAM_API_PORT": str(port),
        "FLEETSTREAM_MAP_LIVE_POLL_SECONDS": "2",
        "FLEETSTREAM_DB_POOL_MAX_SIZE": "4",
        **getattr(request, "param", {}),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "fleetstream.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, server)
        yield url
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=20)
    # uvicorn re-raises SIGTERM after its graceful shutdown, as a supervisor expects.
    assert server.returncode in (0, -signal.SIGTERM), errors[-2000:]
    assert "api stopped" in errors
    assert "refreshed reporting.v_trips: 2 rows" in errors


async def wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                ready = await http.get(f"{url}/readyz")
                if ready.status_code == 200 and ready.json()["last_refresh"]:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the API did not become ready within 30 s")


async def test_live_map_shows_and_moves_every_vehicle(api_url, settings):
    page = dump_dom(f"{api_url}/map/live")

    shown = markers(page, "vehicle")
    assert {imei: shown[imei]["data-plate"] for imei in shown} == {
        imei: plate for imei, plate, *_ in VEHICLES
    }
    for imei, _, lat, lng, acc in VEHICLES:
        assert (float(shown[imei]["data-lat"]), float(shown[imei]["data-lng"])) == (
            lat,
            lng,
        )
        expected = {True: "acc-on", False: "acc-off", None: "acc-unknown"}[acc]
        assert expected in shown[imei]["class"].split()
    offline = [imei for imei in shown if "offline" in shown[imei]["class"].split()]
    assert offline == [STALE_IMEI]
    assert shown[STALE_IMEI]["data-status"] == "offline"
    # No tile URL configured: a plain background, no tile requests.
    assert "no-tiles" in page.by_id["map"]["class"].split()
    assert page.tiles == []

    conn = await asyncpg.connect(settings.database_url)
    await conn.execute(
        "UPDATE tracksolid.live_positions SET lat = lat + 0.01, lng = lng - 0.02,"
        " gps_time = gps_time + interval '1 minute', acc_on = false"
        " WHERE imei = '860000000000011'"
    )
    await conn.close()
    moved = markers(dump_dom(f"{api_url}/map/live"), "vehicle")

    first = moved["860000000000011"]
    assert float(first["data-lat"]) == pytest.approx(-1.2821)
    assert float(first["data-lng"]) == pytest.approx(36.8019)
    assert "acc-off" in first["class"].split()
    assert moved["860000000000012"]["data-lat"] == shown["860000000000012"]["data-lat"]


async def test_live_map_link_opens_a_vehicle_with_its_track(api_url):
    page = dump_dom(f"{api_url}/map/live?vehicle={quote('kza 123a')}")

    hint = page.by_id["vehicle-hint"]
    assert hint.get("data-track-plate") == "KZA-123A"
    assert hint.get("data-track-points") == "4"
    selected = markers(page, "selected")
    assert list(selected) == ["860000000000011"]


async def test_fleet_map_draws_trips_from_the_refreshed_view(api_url):
    page = dump_dom(f"{api_url}/map/fleet")

    ends = [e for e in page.found if "trip-end" in e.get("class", "").split()]
    assert sorted((e["data-trip-id"], e["data-kind"]) for e in ends) == [
        ("trip-a", "end"),
        ("trip-a", "start"),
        ("trip-b", "end"),
        ("trip-b", "start"),
    ]
    trip_a_end = next(
        e for e in ends if (e["data-trip-id"], e["data-kind"]) == ("trip-a", "end")
    )
    assert float(trip_a_end["data-lat"]) == -1.25
    assert float(trip_a_end["data-lng"]) == 36.9
    assert trip_a_end["data-plate"] == "KZA-123A"
    assert page.by_id["figures"]["data-trips"] == "2"


@pytest.mark.parametrize(
    "api_url",
    [{"FLEETSTREAM_MAP_TILE_URL": "/static/tiles/{z}/{x}/{y}.png"}],
    indirect=True,
)
async def test_live_map_draws_tiles_from_the_configured_url(api_url):
    page = dump_dom(f"{api_url}/map/live")

    assert "no-tiles" not in page.by_id["map"]["class"].split()
    assert page.tiles
    assert all(
        re.fullmatch(r"/static/tiles/\d+/\d+/\d+\.png", src) for src in page.tiles
    )
    assert len(markers(page, "vehicle")) == len(VEHICLES)


async def evaluate(socket, expression: str):
    """Return the value of ``expression`` evaluated in the page (DevTools protocol)."""
    call = next(DEVTOOLS_CALLS)
    await socket.send_json(
        {
            "id": call,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": True},
        }
    )
    while True:
        message = await socket.receive_json(timeout=10)
        if message.get("id") == call:
            return message["result"]["result"].get("value")


async def wait_for(socket, expression: str, seconds: float = 15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await evaluate(socket, expression):
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{expression} stayed false for {seconds} s")


async def test_live_map_moves_a_marker_in_place_when_its_fix_changes(api_url, settings):
    # One page stays open, in real time, so its own polling has to move the
    # marker; the dumps above load the page afresh each time.
    marker = "document.querySelector('.vehicle[data-imei=\"860000000000011\"]')"
    with browser_profile() as profile:
        flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time")]
        browser = subprocess.Popen(
            [chromium(), *flags, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", f"{api_url}/map/live"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            for _ in range(100):
                if port_file.exists() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.1)
            port = port_file.read_text().split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as answer:
                    targets = await answer.json()
                page = next(t for t in targets if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"]) as socket:
                    await wait_for(socket, f"{marker} !== null")
                    await evaluate(socket, "window.sameDocument = true")

                    conn = await asyncpg.connect(settings.database_url)
                    await conn.execute(
                        "UPDATE tracksolid.live_positions SET lat = -1.2821,"
                        " gps_time = gps_time + interval '1 minute'"
                        " WHERE imei = '860000000000011'"
                    )
                    await conn.close()
                    moved = await wait_for(
                        socket, f"{marker}.dataset.lat === '-1.2821' && 'moved'"
                    )
                    reloaded = await evaluate(socket, "window.sameDocument !== true")
                    count = await evaluate(
                        socket, "document.querySelectorAll('.vehicle').length"
                    )
        finally:
            # The browser and its helper processes, so none outlives the test.
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(20)

    assert moved == "moved"
    assert reloaded is False
    assert count == len(VEHICLES)

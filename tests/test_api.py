"""The API's endpoints against a real migrated database with a small seeded fleet."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
import uvicorn

from api.app import create_app
from api.limits import BodyLimit
from fleetstream.embedded import free_port

NOW = datetime.now(UTC).replace(microsecond=0)
LIVE_KEYS = ("vehicle_number", "imei", "lat", "lng", "speed", "acc", "gps_time")

DEVICES = [
    # imei, plate, driver, cost centre, city, enabled
    ("860000000000001", "KZA-123A", "Jane Wanjiru", "Dairy", "Nairobi", True),
    ("860000000000002", "KBX 456B", "Otieno Ouma", "Bakery", "Mombasa", True),
    ("860000000000003", "KCC.789C", None, "Dairy", "Nairobi", True),
    ("860000000000004", "KDD 000D", "Retired Driver", "Dairy", "Nairobi", False),
]
LIVE = [
    # imei, minutes ago, lat, lng, speed, acc
    ("860000000000001", 1, -1.2921, 36.8219, 42.5, True),
    ("860000000000002", 2, -4.0435, 39.6682, 0.0, False),
    ("860000000000003", 90, -1.3, 36.8, 0.0, None),
    ("860000000000004", 5, -1.31, 36.81, 0.0, False),
]
HISTORY = [
    # imei, minutes ago, lat, lng, pos_type
    ("860000000000001", 150, -1.2000, 36.7000, "GPS"),
    ("860000000000001", 50, -1.2500, 36.7500, "GPS"),
    ("860000000000001", 30, -1.2700, 36.7800, "GPS"),
    ("860000000000001", 20, -1.9000, 36.9000, "LBS"),
    ("860000000000001", 10, -1.2900, 36.8200, "GPS"),
    ("860000000000002", 20, -4.0400, 39.6600, "GPS"),
]
TRIPS = [
    # trip_id, imei, start (UTC), minutes, km
    ("t1", "860000000000001", "2026-11-10 06:00", 45, 12.5),
    ("t2", "860000000000002", "2026-11-10 09:00", 60, 30.0),
    ("t3", "860000000000003", "2026-11-11 07:00", 20, 5.25),
    ("t4", "860000000000001", "2026-11-12 15:00", 30, 8.0),
]
ALL_NOV = {"start": "2026-11-10T00:00:00Z", "end": "2026-11-13T00:00:00Z"}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ago(minutes: int) -> datetime:
    return NOW - timedelta(minutes=minutes)


def trip_row(trip_id: str, imei: str, start: str, minutes: int, km: float) -> tuple:
    begin = datetime.fromisoformat(start).replace(tzinfo=UTC)
    end = begin + timedelta(minutes=minutes)
    return trip_id, imei, begin, end, km, minutes * 60


async def seed(url: str) -> None:
    """Write the fleet through the columns of docs/architecture.md."""
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO tracksolid.devices (imei, vehicle_number, driver_name,"
            " cost_centre, city, enabled) VALUES ($1, $2, $3, $4, $5, $6)",
            DEVICES,
        )
        await conn.executemany(
            "INSERT INTO tracksolid.live_positions (imei, gps_time, lat, lng,"
            " speed_kmh, acc_on, pos_type, source, origin, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, 'GPS', 'poll', 'test', now())",
            [(i, ago(m), lat, lng, speed, acc) for i, m, lat, lng, speed, acc in LIVE],
        )
        await conn.executemany(
            "INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng,"
            " speed_kmh, pos_type, source, origin, received_at)"
            " VALUES ($1, $2, $3, $4, 30, $5, 'poll', 'test', now())",
            [(i, ago(m), lat, lng, kind) for i, m, lat, lng, kind in HISTORY],
        )
        await conn.executemany(
            "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time,"
            " start_lat, start_lng, end_lat, end_lng, distance_km, duration_s, source)"
            " VALUES ($1, $2, $3, $4, -1.29, 36.82, -1.25, 36.9, $5, $6, 'stream')",
            [trip_row(*trip) for trip in TRIPS],
        )
        await conn.execute("SELECT reporting.refresh_v_trips()")
    finally:
        await conn.close()


@pytest.fixture
async def client(settings):
    await seed(settings.database_url)
    app = create_app(settings, refresh_views=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as http:
            yield http


def live_view(body: list[dict]) -> list[tuple]:
    return [tuple(entry[key] for key in LIVE_KEYS) for entry in body]


async def test_live_positions_one_entry_per_enabled_vehicle(client):
    response = await client.get("/webhook/live-positions")

    assert response.status_code == 200
    # Ordered by normalised plate; the disabled device is left out.
    assert live_view(response.json()) == [
        ("KBX 456B", "860000000000002", -4.0435, 39.6682, 0.0, "off",
         iso(NOW - timedelta(minutes=2))),
        ("KCC.789C", "860000000000003", -1.3, 36.8, 0.0, "unknown",
         iso(NOW - timedelta(minutes=90))),
        ("KZA-123A", "860000000000001", -1.2921, 36.8219, 42.5, "on",
         iso(NOW - timedelta(minutes=1))),
    ]  # fmt: skip
    first = response.json()[0]
    assert first["driver_name"] == "Otieno Ouma"
    assert first["cost_centre"] == "Bakery"
    # Polled every few seconds by every open live map, so sent compressed.
    assert response.headers["content-encoding"] == "gzip"
    assert response.num_bytes_downloaded < len(response.content)


@pytest.mark.parametrize(
    ("params", "imeis"),
    [
        ({"cost_centre": "Dairy"}, ["860000000000003", "860000000000001"]),
        ({"cost_centre": "dairy", "acc_status": "ON"}, ["860000000000001"]),
        ({"acc_status": "off"}, ["860000000000002"]),
        ({"acc_status": "unknown"}, ["860000000000003"]),
        ({"acc_status": "all", "cost_centre": ""}, [
            "860000000000002", "860000000000003", "860000000000001"]),
        ({"cost_centre": "Nowhere"}, []),
    ],
)  # fmt: skip
async def test_live_positions_filters(client, params, imeis):
    response = await client.get("/webhook/live-positions", params=params)

    assert response.status_code == 200
    assert [entry["imei"] for entry in response.json()] == imeis


@pytest.mark.parametrize(
    "params",
    [{"acc_status": "maybe"}, {"cost_centre": "x" * 201}],
)
async def test_live_positions_rejects_bad_filters(client, params):
    response = await client.get("/webhook/live-positions", params=params)

    assert response.status_code == 422
    assert list(params) == [error["loc"][-1] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    "plate", ["KZA-123A", "kza 123a", "K.Z.A 123-a", "860000000000001"]
)
async def test_track_matches_plate_in_any_spelling(client, plate):
    response = await client.get(
        "/webhook/live-positions/track", params={"vehicle_number": plate, "hours": 1}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["vehicle_number"] == "KZA-123A"
    assert body["hours"] == 1
    # The last hour, oldest first, without the cell-tower fix.
    assert [(p["gps_time"], p["lat"], p["lng"]) for p in body["points"]] == [
        (iso(NOW - timedelta(minutes=50)), -1.25, 36.75),
        (iso(NOW - timedelta(minutes=30)), -1.27, 36.78),
        (iso(NOW - timedelta(minutes=10)), -1.29, 36.82),
    ]


async def test_track_hours_widen_the_window(client):
    response = await client.get(
        "/webhook/live-positions/track",
        params={"vehicle_number": "KZA-123A", "hours": 3},
    )

    times = [parse(p["gps_time"]) for p in response.json()["points"]]
    assert times == sorted(times)
    assert times[0] == NOW - timedelta(minutes=150)
    assert len(times) == 4


async def test_track_of_a_vehicle_that_did_not_move_is_empty(client):
    response = await client.get(
        "/webhook/live-positions/track", params={"vehicle_number": "KCC 789C"}
    )

    assert response.status_code == 200
    assert response.json()["points"] == []


async def test_track_of_an_unknown_plate_is_404_with_the_reason(client):
    response = await client.get(
        "/webhook/live-positions/track", params={"vehicle_number": "zz 999z"}
    )

    assert response.status_code == 404
    assert "ZZ999Z" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"vehicle_number": "KZA-123A", "hours": 0}, "hours"),
        ({"vehicle_number": "KZA-123A", "hours": 169}, "hours"),
        ({"vehicle_number": "KZA-123A", "hours": "one"}, "hours"),
        ({"hours": 1}, "vehicle_number"),
        ({"vehicle_number": "x" * 201}, "vehicle_number"),
    ],
)
async def test_track_rejects_bad_parameters(client, params, field):
    response = await client.get("/webhook/live-positions/track", params=params)

    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


async def test_track_rejects_a_plate_without_characters(client):
    response = await client.get(
        "/webhook/live-positions/track", params={"vehicle_number": " - . "}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "vehicle_number"]
    assert "no letters or digits" in response.json()["detail"][0]["msg"]


async def test_fleet_dashboard_totals_count_trips_the_map_leaves_out(
    client, monkeypatch
):
    monkeypatch.setattr("api.routes.MAX_TRIPS", 2)

    response = await client.post("/webhook/fleet-dashboard", json=ALL_NOV)

    assert trip_ids(response) == ["t1", "t2"]
    body = response.json()
    assert body["truncated"] is True
    assert body["summary"] == {
        "trips": 4,
        "vehicles": 3,
        "distance_km": 55.75,
        "driving_seconds": 9300,
    }


def trip_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [trip["trip_id"] for trip in response.json()["trips"]]


async def test_fleet_dashboard_trips_summary_and_filters(client):
    response = await client.post("/webhook/fleet-dashboard", json=ALL_NOV)

    assert trip_ids(response) == ["t1", "t2", "t3", "t4"]
    body = response.json()
    assert body["start"] == "2026-11-10T00:00:00Z"
    assert body["end"] == "2026-11-13T00:00:00Z"
    assert body["truncated"] is False
    assert body["summary"] == {
        "trips": 4,
        "vehicles": 3,
        "distance_km": 55.75,
        "driving_seconds": 9300,
    }
    filters = body["filters"]
    # Enabled devices only, by normalised plate.
    assert [(v["vehicle_number"], v["trips"]) for v in filters["vehicles"]] == [
        ("KBX 456B", 1),
        ("KCC.789C", 1),
        ("KZA-123A", 2),
    ]
    assert [d["driver_name"] for d in filters["drivers"]] == [
        "Jane Wanjiru",
        "Otieno Ouma",
    ]
    assert [(c["cost_centre"], c["vehicles"]) for c in filters["cost_centres"]] == [
        ("Bakery", 1),
        ("Dairy", 2),
    ]
    assert [c["city"] for c in filters["cities"]] == ["Mombasa", "Nairobi"]
    first = body["trips"][0]
    assert first["vehicle_number"] == "KZA-123A"
    assert first["driver_name"] == "Jane Wanjiru"
    assert first["start_time"] == "2026-11-10T06:00:00Z"
    assert (first["start_lat"], first["end_lng"]) == (-1.29, 36.9)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"vehicles": ["kza 123a"]}, ["t1", "t4"]),
        ({"vehicles": ["KZA123A", "KBX-456B"]}, ["t1", "t2", "t4"]),
        ({"vehicles": [""], "driver": ""}, ["t1", "t2", "t3", "t4"]),
        ({"driver": "jane wanjiru"}, ["t1", "t4"]),
        ({"cost_centre": "Dairy"}, ["t1", "t3", "t4"]),
        ({"city": "Mombasa"}, ["t2"]),
        ({"cost_centre": "Dairy", "city": "Mombasa"}, []),
    ],
)
async def test_fleet_dashboard_filters(client, filters, expected):
    response = await client.post("/webhook/fleet-dashboard", json=ALL_NOV | filters)

    assert trip_ids(response) == expected


async def test_fleet_dashboard_reads_zone_less_times_as_fleet_wall_clock(client):
    # Nairobi is UTC+3: its 11 November is 10 Nov 21:00 to 11 Nov 21:00 UTC.
    response = await client.post(
        "/webhook/fleet-dashboard",
        json={"start": "2026-11-11T00:00:00", "end": "2026-11-12T00:00:00"},
    )

    assert trip_ids(response) == ["t3"]
    assert response.json()["start"] == "2026-11-10T21:00:00Z"


async def test_fleet_dashboard_defaults_to_the_last_seven_days(client, settings):
    conn = await asyncpg.connect(settings.database_url)
    await conn.execute(
        "INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time,"
        " distance_km, source) VALUES ('recent', '860000000000002',"
        " now() - interval '2 days', now() - interval '47 hours', 3, 'stream')"
    )
    await conn.execute("SELECT reporting.refresh_v_trips()")
    await conn.close()

    response = await client.post("/webhook/fleet-dashboard", json={})

    assert trip_ids(response) == ["recent"]
    body = response.json()
    assert parse(body["end"]) - parse(body["start"]) == timedelta(days=7)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"start": "2026-11-12T00:00:00Z", "end": "2026-11-10T00:00:00Z"}, "not after"),
        ({"start": "2026-01-01T00:00:00Z", "end": "2026-11-10T00:00:00Z"}, "93 days"),
        ({"start": "yesterday"}, "start"),
        ({"vehicles": "KZA-123A"}, "vehicles"),
        ({"driver_name": "Wanjiru"}, "driver_name"),
    ],
)
async def test_fleet_dashboard_rejects_bad_bodies(client, body, reason):
    response = await client.post("/webhook/fleet-dashboard", json=body)

    assert response.status_code == 422
    assert reason in str(response.json()["detail"])


async def test_health_readiness_and_local_docs(client):
    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    docs = await client.get("/docs")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["missing"] == []
    assert ready.json()["live_vehicles"] == 4
    assert docs.status_code == 200
    # Swagger UI is served from this API, never from a CDN.
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        vendored = await client.get(f"/static/vendor/swagger-ui/{asset}")
        assert vendored.status_code == 200
        assert len(vendored.content) > 100_000
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/webhook/live-positions", "/webhook/live-positions/track"} <= set(paths)
    assert "post" in paths["/webhook/fleet-dashboard"]


async def test_unmigrated_database_is_alive_but_not_ready(
    make_settings, empty_database_url
):
    settings = make_settings(database_url=empty_database_url)
    app = create_app(settings, refresh_views=True)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as http:
            health = await http.get("/healthz")
            ready = await http.get("/readyz")
            live = await http.get("/webhook/live-positions")

    assert health.status_code == 200
    assert ready.status_code == 503
    assert "reporting.fn_live_positions" in str(ready.json())
    # A missing reporting layer is a server-side fault, said as such.
    assert live.status_code == 503
    assert "fleetstream migrate" in live.json()["detail"]


async def test_cross_origin_calls_only_from_configured_origins(make_settings, settings):
    allowed = "https://maps.example.com"
    app = create_app(
        make_settings(database_url=settings.database_url, api_cors_origins=allowed),
        refresh_views=False,
    )
    preflight = {"Access-Control-Request-Method": "POST"}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as http:
            ok = await http.options(
                "/webhook/fleet-dashboard", headers={"Origin": allowed, **preflight}
            )
            other = await http.options(
                "/webhook/fleet-dashboard",
                headers={"Origin": "https://elsewhere.example.org", **preflight},
            )
            get = await http.get("/healthz", headers={"Origin": allowed})

    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert get.headers["access-control-allow-origin"] == allowed


async def test_map_config_names_the_fleet_zone_of_page_times(client, settings):
    config = (await client.get("/map/config")).json()

    assert config["fleet_timezone"] == settings.fleet_timezone == "Africa/Nairobi"
    assert config["tile_url"] == ""


DASHBOARD = "/webhook/fleet-dashboard"
JSON_TYPE = {"content-type": "application/json"}
DEFAULT_LIMIT = 1_048_576
HEAD = (
    b"POST /webhook/fleet-dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\n"
)


@asynccontextmanager
async def serving(app):
    """Run ``app`` with uvicorn on a free port of 127.0.0.1; yield the port."""
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
        yield port
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def connection(port: int):
    """Yield a reader and writer on ``port``; closing them ends any unsent body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    """Return the status and JSON body of one HTTP/1.1 answer read from ``reader``."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, json.loads(body)


async def test_the_default_body_limit_holds_the_largest_fleet_query(client, settings):
    # 200 characters of 4 bytes in UTF-8 each, the most a plate or filter holds.
    longest = "\U0001f69a" * 200
    query = {
        "vehicles": [longest] * 1000,
        "driver": longest,
        "cost_centre": longest,
        "city": longest,
        **ALL_NOV,
    }
    body = json.dumps(query, ensure_ascii=False).encode()

    response = await client.post(DASHBOARD, content=body, headers=JSON_TYPE)

    assert settings.api_max_body_bytes == DEFAULT_LIMIT
    assert 800_000 < len(body) < DEFAULT_LIMIT
    assert trip_ids(response) == []


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(
    make_settings, settings, streamed
):
    body = json.dumps(ALL_NOV).encode()
    statuses = []
    for limit in (len(body), len(body) - 1):
        app = create_app(
            make_settings(database_url=settings.database_url, api_max_body_bytes=limit),
            refresh_views=False,
        )

        async def halves():
            yield body[:10]
            yield body[10:]

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as h:
                content = halves() if streamed else body
                response = await h.post(DASHBOARD, content=content, headers=JSON_TYPE)
        statuses.append(response.status_code)

    assert statuses == [200, 413]


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(settings):
    app = create_app(settings, refresh_views=False)
    async with serving(app) as port, connection(port) as (reader, writer):
        # 15 MB announced, a few bytes sent: only an answer that did not wait
        # for the body arrives within the timeout.
        writer.write(HEAD + b"Content-Length: 15000000\r\n\r\n" + b'{"vehicles":[')
        status, body = await asyncio.wait_for(read_answer(reader), 5)

    assert status == 413
    assert body == {"detail": f"body of 15000000 bytes exceeds {DEFAULT_LIMIT}"}


async def test_a_chunked_oversized_body_is_refused_before_it_ends(settings):
    chunk = b"x" * 65_536
    app = create_app(settings, refresh_views=False)
    async with serving(app) as port, connection(port) as (reader, writer):
        writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        # 17 chunks of 64 KiB pass the limit; the last, empty chunk that ends a
        # chunked body is never sent, so the answer cannot wait for the end.
        for _ in range(DEFAULT_LIMIT // len(chunk) + 1):
            writer.write(b"10000\r\n" + chunk + b"\r\n")
        status, body = await asyncio.wait_for(read_answer(reader), 5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            live = await asyncio.wait_for(http.get("/webhook/live-positions"), 5)

    assert status == 413
    assert body == {"detail": f"body exceeds {DEFAULT_LIMIT} bytes"}
    assert live.status_code == 200


async def test_a_streamed_body_is_read_no_further_than_the_limit(client):
    chunk = b"x" * 65_536
    sent = 0

    async def sixty_four_mebibytes():
        nonlocal sent
        for _ in range(1024):
            sent += len(chunk)
            yield chunk

    response = await client.post(
        DASHBOARD, content=sixty_four_mebibytes(), headers=JSON_TYPE
    )

    assert response.status_code == 413
    assert response.json() == {"detail": f"body exceeds {DEFAULT_LIMIT} bytes"}
    # The chunk that crossed the limit is the last one asked for.
    assert sent <= DEFAULT_LIMIT + len(chunk)


async def test_a_body_read_outside_the_routes_is_refused_too():
    async def whole_body_echo(scope, receive, send):
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message["body"], message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=BodyLimit(whole_body_echo, limit=10))

    async def pieces():
        for _ in range(3):
            yield b"12345"

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        streamed = await http.post("/", content=pieces())
        declared = await http.post("/", content=b"12345" * 3)

    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "body exceeds 10 bytes"}
    assert declared.status_code == 413
    assert declared.json() == {"detail": "body of 15 bytes exceeds 10"}


def huge_invalid_requests() -> list:
    dumps = json.dumps
    return [
        pytest.param(dumps({"vehicles": ["x"] * 200_000}), id="200k plates"),
        pytest.param(dumps({"driver": "a" * 1_000_000}), id="1 MB driver"),
        pytest.param(dumps({"b" * 1_000_000: 1}), id="1 MB field name"),
        pytest.param(dumps({"vehicles": ["\x00"] * 1000}), id="1000 bad plates"),
        pytest.param(dumps({"vehicles": [{"a": "b" * 1000}] * 900}), id="objects"),
        pytest.param('{"driver": NaN, "city": 1e400}', id="not finite"),
        pytest.param(dumps({"start": 10**4000}), id="4000 digits"),
        pytest.param('{"driver": "' + "a" * 1_000_000, id="not JSON"),
    ]


@pytest.mark.parametrize("body", huge_invalid_requests())
async def test_a_huge_invalid_body_gets_a_small_422(client, body):
    response = await client.post(DASHBOARD, content=body, headers=JSON_TYPE)

    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 4096
    errors = response.json()["detail"]
    assert 0 < len(errors) <= 21
    for error in errors:
        assert set(error) <= {"loc", "msg", "type", "input"}, error
        assert error["msg"] and error["type"] and isinstance(error["loc"], list)
        assert all(len(str(part)) <= 41 for part in error["loc"])
        assert len(str(error.get("input", ""))) <= 41


async def test_a_422_quotes_a_prefix_of_the_value_and_counts_what_it_leaves_out(
    client,
):
    long_driver = await client.post(DASHBOARD, json={"driver": "Wanjiru " * 1000})
    plates = await client.post(DASHBOARD, json={"vehicles": ["\x00"] * 1000})
    track = await client.get(
        "/webhook/live-positions/track", params={"vehicle_number": "K" * 10_000}
    )
    not_json = await client.post(DASHBOARD, content=b'{"driver": ', headers=JSON_TYPE)

    (driver_error,) = long_driver.json()["detail"]
    assert driver_error["loc"] == ["body", "driver"]
    assert driver_error["input"] == ("Wanjiru " * 5) + "\u2026"
    errors = plates.json()["detail"]
    assert [e["loc"] for e in errors[:2]] == [
        ["body", "vehicles", 0],
        ["body", "vehicles", 1],
    ]
    assert "U+0000" in errors[0]["msg"]
    assert errors[-1] == {
        "type": "too_many_errors",
        "loc": ["request"],
        "msg": "980 more errors are not listed",
    }
    assert track.status_code == 422
    assert track.json()["detail"][0]["input"] == "K" * 40 + "\u2026"
    # The parser's reason names no value, so it is kept.
    assert not_json.json()["detail"] == [
        {
            "type": "json_invalid",
            "loc": ["body", 11],
            "msg": "JSON decode error: Expecting value",
        }
    ]

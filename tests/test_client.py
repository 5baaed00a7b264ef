"""The Open API client against the fake platform over HTTP and a real database."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from test_webhook import serving

from fakeplatform.openapi import FakeConfig
from fakeplatform.server import FakePlatform
from fakeplatform.traces import history_replay, load_traces
from fleetstream.codec import codec
from fleetstream.db import create_pool
from fleetstream.embedded import free_port
from fleetstream.errors import ConfigError
from producers.client import (
    ApiError,
    Envelope,
    IpLimitError,
    RetriesExhausted,
    TracksolidClient,
    backoff_delay,
    sign,
)
from producers.publish import record_imei

FIXTURES = Path(__file__).parent / "fixtures" / "tracksolid"
SHARED = Path(os.environ.get("FLEETSTREAM_SHARED_DIR", "/work/shared"))
REAL_SAMPLES = SHARED / "realdata" / "tracksolid-api-samples"
DEVICE_LIST = "jimi.user.device.list"


@pytest.fixture
async def fake():
    replay = history_replay(load_traces(["truck-B", "visnjan-car"]), datetime.now(UTC))
    async with FakePlatform(FakeConfig(), replay) as platform:
        yield platform


@pytest.fixture
def client_settings(make_settings, database_url, fake):
    def factory(**overrides):
        config = fake.api.config
        values = {
            "database_url": database_url,
            "tracksolid_base_url": fake.base_url,
            "tracksolid_app_key": config.app_key,
            "tracksolid_app_secret": config.app_secret,
            "tracksolid_user_id": config.user_id,
            "tracksolid_user_pwd_md5": config.user_pwd_md5,
            "tracksolid_target": config.user_id,
            "tracksolid_backoff_base_seconds": 0.2,
            "tracksolid_backoff_max_seconds": 1.0,
            "tracksolid_max_attempts": 5,
        }
        values.update(overrides)
        return make_settings(**values)

    return factory


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


def methods(fake) -> list[tuple[str, int]]:
    return [(call.method, call.code) for call in fake.api.calls]


def test_signature_matches_the_published_vector():
    form = dict(
        parse_qsl((FIXTURES / "token_get_request.form.txt").read_text().strip())
    )

    assert sign(form, "fakeSecret0000000000000000000001") == form["sign"]
    assert form["sign"] == "B44DD6A3B632A02403B7C18FF39AA2D3"
    # Empty values are not signed; a changed value changes the signature.
    assert (
        sign({**form, "map_type": ""}, "fakeSecret0000000000000000000001")
        == (form["sign"])
    )
    assert sign({**form, "expires_in": "7199"}, "x") != form["sign"]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_every_response_sample_parses(path):
    body = json.loads(path.read_text())

    envelope = Envelope.parse("sample", body)

    assert envelope.code == int(body["code"])
    expected = (
        body["result"]
        if isinstance(body["result"], list)
        else (body.get("data") or {}).get("rows", [])
        if isinstance(body.get("data"), dict)
        else []
    )
    assert envelope.records() == expected
    for record in envelope.records():
        if "imei" in record:
            assert record_imei(record) == record["imei"]


def test_string_codes_and_real_bodies_parse():
    string_code = Envelope.parse("m", {"code": "1006", "message": "x", "result": None})
    assert string_code.code == 1006
    track = json.loads(
        (REAL_SAMPLES / "jimi.device.track.list.response.json").read_text()
    )
    wrapped = json.loads((REAL_SAMPLES / "track_list.realapp.json").read_text())
    locations = json.loads((REAL_SAMPLES / "location_list.realapp.json").read_text())

    for body in (track, wrapped["data"]):
        envelope = Envelope.parse("jimi.device.track.list", body)
        assert envelope.code == 0
        assert [r["gpsTime"] for r in envelope.records()] == [
            "2020-03-22 13:57:01",
            "2020-03-22 13:57:11",
        ]
        assert all(isinstance(r["posType"], int) for r in envelope.records())
    # The relay's wrapper is no envelope: a null code reads as busy and is retried.
    assert Envelope.parse("relay", locations).code == -1
    relayed = Envelope.parse("x", {"code": 0, "result": locations["data"]})
    assert [record_imei(r) for r in relayed.records()] == [
        r["imei"] for r in locations["data"]
    ]


def test_raw_payload_keeps_json_types():
    locations = json.loads((REAL_SAMPLES / "location_list.realapp.json").read_text())
    raw = codec("RawEvent")
    for record in locations["data"]:
        encoded = raw.encode(
            {
                "source": "poll",
                "origin": "jimi.user.device.location.list",
                "received_at": datetime.now(UTC),
                "imei": record_imei(record),
                "payload": json.dumps(record),
                "request_id": "r",
            }
        )
        assert json.loads(raw.decode(encoded)["payload"]) == record


async def test_token_is_cached_and_shared_between_workers(client_settings, pool, fake):
    settings = client_settings()
    clients = [TracksolidClient(settings, pool, worker=f"w{i}") for i in range(5)]

    results = await asyncio.gather(
        *(c.call(DEVICE_LIST, target="fleet_demo_ke") for c in clients)
    )

    assert all(len(r.records()) == 3 for r in results)
    assert methods(fake).count(("jimi.oauth.token.get", 0)) == 1
    row = await pool.fetchrow("SELECT * FROM tracksolid.api_token_cache")
    assert row["account"] == "fleet_demo_ke"
    assert row["app_key"] == settings.tracksolid_app_key
    assert row["owner"] in {f"w{i}" for i in range(5)}
    assert row["expires_at"] > datetime.now(UTC) + timedelta(minutes=100)
    for client in clients:
        await client.aclose()


async def test_token_expiring_mid_run_is_refreshed_once(client_settings, pool, fake):
    client = TracksolidClient(client_settings(), pool, worker="t")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")

    fake.api.configure({"advance_clock_seconds": 7300})
    envelope = await client.call(DEVICE_LIST, target="fleet_demo_ke")

    assert envelope.code == 0
    assert methods(fake) == [
        ("jimi.oauth.token.get", 0),
        (DEVICE_LIST, 0),
        (DEVICE_LIST, 1004),
        ("jimi.oauth.token.refresh", 0),
        (DEVICE_LIST, 0),
    ]
    await client.aclose()


async def test_refresh_failure_falls_back_to_a_new_token(client_settings, pool, fake):
    client = TracksolidClient(client_settings(), pool, worker="t")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    fake.api.configure({"advance_clock_seconds": 7300, "refresh_fails": True})

    await client.call(DEVICE_LIST, target="fleet_demo_ke")

    assert methods(fake)[2:] == [
        (DEVICE_LIST, 1004),
        ("jimi.oauth.token.refresh", 1004),
        ("jimi.oauth.token.get", 0),
        (DEVICE_LIST, 0),
    ]
    await client.aclose()


async def test_token_due_for_renewal_is_refreshed_before_it_expires(
    client_settings, pool, fake
):
    settings = client_settings(tracksolid_token_refresh_margin_seconds=600)
    client = TracksolidClient(settings, pool, worker="t")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    # Another worker's view: the cached token has five minutes left.
    await pool.execute(
        "UPDATE tracksolid.api_token_cache SET expires_at = now() + interval '5 min'"
    )
    other = TracksolidClient(settings, pool, worker="other")

    await other.call(DEVICE_LIST, target="fleet_demo_ke")

    assert methods(fake)[2:] == [("jimi.oauth.token.refresh", 0), (DEVICE_LIST, 0)]
    assert (
        await pool.fetchval("SELECT owner FROM tracksolid.api_token_cache") == "other"
    )
    await client.aclose()
    await other.aclose()


async def test_rate_limit_storm_backs_off_and_succeeds(client_settings, pool, fake):
    client = TracksolidClient(client_settings(), pool, worker="t")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    fake.api.configure(
        {"fail_code": 1006, "fail_next": 3, "fail_methods": [DEVICE_LIST]}
    )
    started = len(fake.api.calls)

    envelope = await client.call(DEVICE_LIST, target="fleet_demo_ke")

    storm = fake.api.calls[started:]
    assert envelope.code == 0
    assert [c.code for c in storm] == [1006, 1006, 1006, 0]
    gaps = [b.at - a.at for a, b in zip(storm, storm[1:], strict=False)]
    # Each wait lies between half its doubling ceiling and the ceiling.
    for attempt, gap in enumerate(gaps, start=1):
        ceiling = min(1.0, 0.2 * 2 ** (attempt - 1))
        assert ceiling / 2 <= gap < ceiling + 0.3
    assert all(0.1 <= backoff_delay(9, 0.2, 1.0) - 0.4 <= 0.6 for _ in range(50))
    await client.aclose()


async def test_busy_storm_is_bounded(client_settings, pool, fake):
    client = TracksolidClient(
        client_settings(tracksolid_max_attempts=3), pool, worker="t"
    )
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    fake.api.configure({"fail_code": -1, "fail_next": 50})
    started = len(fake.api.calls)

    with pytest.raises(RetriesExhausted) as raised:
        await client.call(DEVICE_LIST, target="fleet_demo_ke")

    assert raised.value.code == -1
    assert [c.code for c in fake.api.calls[started:]] == [-1, -1, -1]
    await client.aclose()


async def test_ip_limit_is_raised_without_retry(client_settings, pool, fake):
    client = TracksolidClient(client_settings(), pool, worker="t")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    fake.api.configure({"fail_code": 1005, "fail_next": 1})

    with pytest.raises(IpLimitError):
        await client.call(DEVICE_LIST, target="fleet_demo_ke")

    assert methods(fake)[-1] == (DEVICE_LIST, 1005)
    assert len(fake.api.calls) == 3
    await client.aclose()


async def test_other_codes_are_raised(client_settings, pool, fake):
    client = TracksolidClient(client_settings(), pool, worker="t")

    with pytest.raises(ApiError) as raised:
        await client.call("jimi.device.track.list", imei="1", begin_time="x")

    assert raised.value.code == 1001
    await client.aclose()


async def test_transport_errors_are_retried_a_bounded_number_of_times(
    client_settings, pool
):
    dead = f"http://127.0.0.1:{free_port()}/route/rest"
    settings = client_settings(tracksolid_base_url=dead, tracksolid_max_attempts=3)
    client = TracksolidClient(settings, pool, worker="t")

    with pytest.raises(RetriesExhausted):
        await client.call("jimi.oauth.token.get", user_id="u")

    rows = await pool.fetch("SELECT * FROM tracksolid.ingestion_log")
    assert len(rows) == 3
    assert all(r["result_code"] is None and "ConnectError" in r["error"] for r in rows)
    await client.aclose()


async def test_every_call_is_logged_without_secrets(client_settings, pool, fake):
    settings = client_settings()
    client = TracksolidClient(settings, pool, worker="poll@test")
    await client.call(DEVICE_LIST, target="fleet_demo_ke")
    fake.api.configure({"advance_clock_seconds": 7300, "fail_next": 1})
    await client.call("jimi.device.location.get", imeis=["1", "2"])

    rows = await pool.fetch("SELECT * FROM tracksolid.ingestion_log ORDER BY id")

    assert [(r["method"], r["result_code"]) for r in rows] == methods(fake)
    assert {r["worker"] for r in rows} == {"poll@test"}
    assert {r["account"] for r in rows} == {"fleet_demo_ke"}
    assert all(r["duration_ms"] >= 0 and r["http_status"] == 200 for r in rows)
    assert rows[1]["record_count"] == 3
    assert rows[-1]["imei_count"] == 2
    tokens = await pool.fetchrow("SELECT * FROM tracksolid.api_token_cache")
    secrets = {
        settings.tracksolid_app_secret.get_secret_value(),
        settings.tracksolid_user_pwd_md5.get_secret_value(),
        tokens["access_token"],
        tokens["refresh_token"],
    }
    text = json.dumps([dict(r) for r in rows], default=str)
    assert not [s for s in secrets if s in text]
    await client.aclose()


async def test_unusable_answers_are_retried_like_transport_errors(
    client_settings, pool
):
    answers = [
        Response("<html>busy</html>", media_type="text/html"),
        Response("[1, 2]", media_type="application/json"),
        # Nested deeper than any JSON parser's stack.
        Response("[" * 100_000 + "]" * 100_000, media_type="application/json"),
        Response('{"code": 0}', status_code=502, media_type="application/json"),
    ]

    served = []

    async def route_rest(request):
        served.append(request)
        return answers[(len(served) - 1) % len(answers)]

    app = Starlette(routes=[Route("/route/rest", route_rest, methods=["POST"])])
    async with serving(app) as url:
        settings = client_settings(
            tracksolid_base_url=url + "/route/rest", tracksolid_max_attempts=4
        )
        client = TracksolidClient(settings, pool, worker="t")
        try:
            with pytest.raises(RetriesExhausted):
                await client.call("jimi.oauth.token.get", user_id="u")
        finally:
            await client.aclose()

    rows = await pool.fetch("SELECT * FROM tracksolid.ingestion_log ORDER BY id")
    assert [r["http_status"] for r in rows] == [200, 200, 200, 502]
    assert all(r["result_code"] is None for r in rows)
    assert "RecursionError" in rows[2]["error"]
    assert "HTTPStatusError" in rows[3]["error"]


def test_a_client_without_credentials_refuses_to_start(make_settings):
    settings = make_settings(tracksolid_app_key="", tracksolid_user_id="")

    with pytest.raises(ConfigError, match="TRACKSOLID_APP_KEY.*TRACKSOLID_USER_ID"):
        TracksolidClient(settings, pool=None, worker="t")

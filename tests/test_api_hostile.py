"""Hostile input on every endpoint: a 4xx with the reason, never a 500.

The API runs against a real migrated database, so a value that slipped past the
checks would reach PostgreSQL and show here as the 500 it used to be.
"""

from __future__ import annotations

import json

import httpx
import pytest

from api.app import create_app

LIVE = "/webhook/live-positions"
TRACK = "/webhook/live-positions/track"
DASHBOARD = "/webhook/fleet-dashboard"
JSON = "application/json"

# Characters PostgreSQL or UTF-8 refuse, and controls that have no place in text.
# (U+0085 is left out: Python counts it as blank, so it means "no filter".)
BAD_CHARACTERS = ["\x00", "KCX\x00789C", "\x1b[2J", "a\tb", "\x7f", "\x9b", "\ud800"]
LONG = "K" * 10_000


def assert_reasons(response: httpx.Response) -> None:
    """Assert a 422 carries reasons in the shape the OpenAPI document declares."""
    errors = response.json()["detail"]
    assert isinstance(errors, list) and errors, errors
    assert all(error["msg"] and isinstance(error["loc"], list) for error in errors)


@pytest.fixture
async def client(settings):
    app = create_app(settings, refresh_views=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as http:
            yield http


def query_cases() -> list[tuple[str, dict]]:
    cases = []
    for text in [*BAD_CHARACTERS[:-1], LONG]:
        cases.append((LIVE, {"cost_centre": text}))
        cases.append((LIVE, {"acc_status": text}))
        cases.append((TRACK, {"vehicle_number": text}))
    for hours in ["0", "-1", "169", "9" * 5000, "1e400", "nan", "٣", "1.5", ""]:
        cases.append((TRACK, {"vehicle_number": "KZA123A", "hours": hours}))
    cases.append((TRACK, {}))
    return cases


@pytest.mark.parametrize("path,params", query_cases())
async def test_hostile_query_parameters_are_refused_with_a_reason(client, path, params):
    response = await client.get(path, params=params)

    assert response.status_code == 422, (params, response.text[:300])
    assert_reasons(response)


def body_cases() -> list[dict | list | str]:
    cases: list = []
    for text in BAD_CHARACTERS:
        cases += [{"driver": text}, {"cost_centre": text}, {"city": text}]
        cases.append({"vehicles": ["KZA-123A", text]})
    cases += [{"driver": LONG}, {"vehicles": [LONG]}, {"vehicles": ["K"] * 1001}]
    for moment in [
        "0001-01-02T00:00:00",
        "0001-01-01T00:00:00+14:00",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "9999-12-31T23:00:00-05:00",
        1e20,
        -(10**12),
        "2026-13-01T00:00:00",
    ]:
        cases += [{"start": moment}, {"end": moment}]
    cases.append(
        {"start": "9999-12-30T00:00:00-05:00", "end": "9999-12-31T23:00:00-05:00"}
    )
    cases += [[], "text", {"vehicles": {"a": 1}}, {"driver": ["x"]}]
    return cases


@pytest.mark.parametrize("body", body_cases())
async def test_hostile_dashboard_bodies_are_refused_with_a_reason(client, body):
    # Sent as ASCII JSON: a lone surrogate is valid JSON text as an escape.
    response = await client.post(
        DASHBOARD, content=json.dumps(body), headers={"content-type": JSON}
    )

    assert response.status_code == 422, (body, response.text[:300])
    assert_reasons(response)


async def test_control_characters_are_named_in_the_reason(client):
    response = await client.get(TRACK, params={"vehicle_number": "KCX\x00789C"})
    assert "U+0000" in str(response.json()["detail"])
    response = await client.post(DASHBOARD, json={"end": "0001-01-02T00:00:00"})
    assert "year 1 is outside 2000..2099" in str(response.json()["detail"])
    response = await client.post(DASHBOARD, json={"start": "2000-01-01T00:00:00Z"})
    assert response.json()["detail"][0]["loc"] == ["body", "start"]
    assert "93 days" in response.json()["detail"][0]["msg"]


async def test_edges_of_the_accepted_ranges_still_answer(client):
    body = {"start": "2000-01-01T00:00:00Z", "end": "2000-02-01T00:00:00Z"}
    response = await client.post(DASHBOARD, json={**body, "driver": "Zoë Ñandú 李"})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["trips"] == []
    response = await client.get(TRACK, params={"vehicle_number": "KZA 123A"})
    assert response.status_code == 404  # a plate of printable text, unknown


@pytest.fixture
async def probe(settings):
    """An API with one extra route that runs SQL, to reach the error mapping."""
    app = create_app(settings, refresh_views=False)

    @app.get("/probe")
    async def run_sql(sql: str, value: str | None = None) -> dict:
        async with app.state.pool.acquire() as conn:
            await conn.execute("SET statement_timeout = 50")
            args = () if value is None else (value,)
            return {"value": await conn.fetchval(sql, *args)}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as http:
            yield http


@pytest.mark.parametrize(
    "sql,value,status",
    [
        ("SELECT $1::int", "abc", 422),  # driver: not an integer
        ("SELECT $1::text::int", "abc", 422),  # server: invalid text representation
        ("SELECT 1 / $1::text::int", "0", 422),  # server: division by zero
        ("SELECT $1::text", "a\x00b", 422),  # server: NUL not in the repertoire
        ("SELECT '9999-12-31'::timestamptz + interval '300000 years'", None, 422),
        ("SELECT pg_sleep(1)", None, 503),  # statement timeout: retry later
        ("SELECT 1", None, 200),
    ],
)
async def test_database_errors_map_to_client_or_availability_codes(
    probe, sql, value, status
):
    params = {"sql": sql} if value is None else {"sql": sql, "value": value}
    response = await probe.get("/probe", params=params)

    assert response.status_code == status, response.text[:300]
    if status == 422:
        assert_reasons(response)
    if status == 503:
        assert response.headers["retry-after"]

"""The fake platform's Open API over HTTP: checks, limits, quirks and faults."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from fakeplatform.openapi import EXPIRED_IMEI, FakeConfig, fake_sign
from fakeplatform.server import FakePlatform
from fakeplatform.traces import history_replay, load_traces
from fleetstream.embedded import free_port
from producers.client import format_time, sign

FIXTURES = Path(__file__).parent / "fixtures" / "tracksolid"
TRACES = load_traces(["truck-A", "truck-B", "denver-1"])
IMEI = {t.name: t.imei for t in TRACES}


@pytest.fixture
async def fake():
    now = datetime.now(UTC)
    config = FakeConfig(child_accounts={"fleet_sub": [IMEI["denver-1"]]})
    async with FakePlatform(config, history_replay(TRACES, now)) as platform:
        async with httpx.AsyncClient() as http:
            platform.http = http
            yield platform


async def request(
    fake, method: str, *, token: str | None = None, via: str = "post", **params
) -> dict:
    config = fake.api.config
    form = {
        "method": method,
        "timestamp": format_time(datetime.now(UTC)),
        "app_key": config.app_key,
        "sign_method": "md5",
        "v": "1.0",
        "format": "json",
        **({"access_token": token} if token else {}),
        **{k: str(v) for k, v in params.items()},
    }
    form.setdefault("sign", sign(form, config.app_secret))
    if via == "get":
        response = await fake.http.get(fake.base_url, params=form)
    else:
        response = await fake.http.post(fake.base_url, data=form)
    assert response.status_code == 200
    return response.json()


async def token(fake) -> str:
    config = fake.api.config
    body = await request(
        fake,
        "jimi.oauth.token.get",
        user_id=config.user_id,
        user_pwd_md5=config.user_pwd_md5,
        expires_in=7200,
    )
    assert body["code"] == 0
    return body["result"]["accessToken"]


def test_fake_signature_matches_the_published_vector():
    form = dict(
        parse_qsl((FIXTURES / "token_get_request.form.txt").read_text().strip())
    )

    assert fake_sign(form, "fakeSecret0000000000000000000001") == form["sign"]


async def test_signature_and_timestamp_are_checked(fake):
    config = fake.api.config
    login = {"user_id": config.user_id, "user_pwd_md5": config.user_pwd_md5}

    assert (await request(fake, "jimi.oauth.token.get", via="get", **login))[
        "code"
    ] == 0
    bad_sign = await request(fake, "jimi.oauth.token.get", sign="0" * 32, **login)
    unsigned = await request(fake, "jimi.oauth.token.get", v="0.9", sign="", **login)
    stale = datetime.now(UTC) - timedelta(minutes=11)
    late = await request(
        fake, "jimi.oauth.token.get", timestamp=format_time(stale), **login
    )
    wrong_pwd = await request(
        fake, "jimi.oauth.token.get", user_id=config.user_id, user_pwd_md5="0" * 32
    )

    assert bad_sign["code"] == 1001 and "sign" in bad_sign["message"]
    assert unsigned["code"] == 0
    assert late["code"] == 1001 and "timestamp" in late["message"]
    assert wrong_pwd["code"] == 1001
    assert (await request(fake, "jimi.no.such.method"))["code"] == 1001


async def test_tokens_expire_on_the_fake_clock(fake):
    access = await token(fake)
    target = fake.api.config.user_id
    ok = await request(fake, "jimi.user.device.list", token=access, target=target)

    fake_config = await fake.http.post(
        fake.base_url.replace("/route/rest", "/_fake/config"),
        json={"advance_clock_seconds": 7201},
    )
    expired = await request(fake, "jimi.user.device.list", token=access, target=target)

    assert ok["code"] == 0 and fake_config.status_code == 200
    assert expired["code"] == 1004
    assert (await request(fake, "jimi.user.device.list", target=target))["code"] == 1004


async def test_registry_spans_sub_accounts_with_platform_types(fake):
    access = await token(fake)
    main = await request(
        fake, "jimi.user.device.list", token=access, target="fleet_demo_ke"
    )
    children = await request(fake, "jimi.user.child.list", token=access)
    sub = await request(fake, "jimi.user.device.list", token=access, target="fleet_sub")
    stranger = await request(fake, "jimi.user.device.list", token=access, target="x")

    assert [c["account"] for c in children["result"]] == ["fleet_sub"]
    assert {d["imei"] for d in main["result"]} == {
        IMEI["truck-A"],
        IMEI["truck-B"],
        EXPIRED_IMEI,
    }
    assert [d["imei"] for d in sub["result"]] == [IMEI["denver-1"]]
    assert stranger["code"] == 1002
    by_imei = {d["imei"]: d for d in main["result"] + sub["result"]}
    assert by_imei[IMEI["truck-A"]]["vehicleNumber"] == "kza 123a"
    assert by_imei[EXPIRED_IMEI]["enabledFlag"] == 0
    assert all(isinstance(d["enabledFlag"], int) for d in by_imei.values())
    values = [v for d in by_imei.values() for v in d.values()]
    assert None in values and "" in values


async def test_locations_quirks_omissions_and_batch_limit(fake):
    access = await token(fake)
    fake.api.configure({"omit_imeis": [IMEI["truck-B"]]})

    listed = await request(fake, "jimi.user.device.location.list", token=access)
    got = await request(
        fake, "jimi.device.location.get", token=access, imeis=IMEI["truck-B"]
    )
    too_many = await request(
        fake,
        "jimi.device.location.get",
        token=access,
        imeis=",".join(str(860000000000000 + i) for i in range(101)),
    )

    rows = {r["imei"]: r for r in listed["result"]}
    assert set(rows) == {IMEI["truck-A"], EXPIRED_IMEI}
    truck = rows[IMEI["truck-A"]]
    assert truck["posType"] == "GPS" and isinstance(truck["speed"], str)
    assert isinstance(truck["lat"], float) and truck["gpsTime"] <= truck["hbTime"]
    expired = rows[EXPIRED_IMEI]
    assert (expired["lat"], expired["lng"], expired["expireFlag"]) == (0, 0, "0")
    assert [r["imei"] for r in got["result"]] == [IMEI["truck-B"]]
    assert got["result"][0]["account"] == "fleet_demo_ke"
    assert too_many["code"] == 1001


async def test_track_list_limits_and_quirks(fake):
    access = await token(fake)
    now = datetime.now(UTC)

    def track(**params):
        return request(fake, "jimi.device.track.list", token=access, **params)

    window = {"begin_time": format_time(now - timedelta(hours=3))}
    body = await track(imei=IMEI["truck-A"], end_time=format_time(now), **window)
    too_long = await track(
        imei=IMEI["truck-A"],
        begin_time=format_time(now - timedelta(days=8)),
        end_time=format_time(now - timedelta(hours=1)),
    )
    future = await track(
        imei=IMEI["truck-A"], end_time=format_time(now + timedelta(minutes=5)), **window
    )
    two = await track(
        imei=f"{IMEI['truck-A']},{IMEI['truck-B']}", end_time=format_time(now), **window
    )
    expired = await track(imei=EXPIRED_IMEI, end_time=format_time(now), **window)

    points = body["result"]
    assert len(points) > 1000 and body["data"]["mileage"] > 0
    stamps = [p["gpsTime"] for p in points]
    assert stamps == sorted(stamps)
    assert max(Counter(stamps).values()) > 1, "truck-A's repeated fixes are served"
    assert {type(p["posType"]) for p in points} == {int}
    kinds = {type(p["gpsSpeed"]) for p in points}
    assert str in kinds and kinds - {str} and kinds <= {str, int, float}
    assert (too_long["code"], future["code"], two["code"]) == (1001, 1001, 1001)
    assert expired["code"] == 1002 and "expired" in expired["message"]


async def test_late_points_appear_only_once_delivered(fake):
    trace = next(t for t in TRACES if t.name == "truck-B")
    late = max(trace.points, key=lambda p: p.delivery_offset_s - p.offset_s)
    replay = fake.api.replay
    fix_at = replay.instant(trace, 0, late.offset_s)
    delivered_at = replay.instant(trace, 0, late.delivery_offset_s)
    access = await token(fake)
    fake.api.configure({"timestamp_tolerance_seconds": 10**7})
    window = {
        "imei": trace.imei,
        "begin_time": format_time(fix_at - timedelta(seconds=1)),
        "end_time": format_time(fix_at + timedelta(seconds=1)),
    }
    stamp = format_time(fix_at)

    fake.api.wall = lambda: delivered_at - timedelta(seconds=5)
    before = await request(fake, "jimi.device.track.list", token=access, **window)
    fake.api.wall = lambda: delivered_at + timedelta(seconds=1)
    after = await request(fake, "jimi.device.track.list", token=access, **window)

    assert delivered_at - fix_at > timedelta(minutes=5)
    assert stamp not in [p["gpsTime"] for p in before["result"]]
    assert stamp in [p["gpsTime"] for p in after["result"]]


async def test_mileage_unit_alarm_paging_and_parking(fake):
    access = await token(fake)
    now = datetime.now(UTC)
    window = {
        "begin_time": format_time(now - timedelta(hours=3)),
        "end_time": format_time(now),
    }
    imeis = ",".join(IMEI.values())
    km = await request(
        fake, "jimi.device.track.mileage", token=access, imeis=imeis, **window
    )
    fake.api.configure({"mileage_unit": "m", "overspeed_kmh": 30.0})
    metres = await request(
        fake, "jimi.device.track.mileage", token=access, imeis=imeis, **window
    )
    pages = [
        await request(
            fake,
            "jimi.device.alarm.list",
            token=access,
            imeis=imeis,
            page_no=n,
            page_size=20,
            **window,
        )
        for n in (1, 2, 3, 4, 5)
    ]
    month = await request(
        fake,
        "jimi.device.alarm.list",
        token=access,
        imeis=imeis,
        begin_time=format_time(now - timedelta(days=40)),
        end_time=format_time(now),
    )
    parking = await request(
        fake,
        "jimi.open.platform.report.parking",
        token=access,
        imeis=imeis,
        start_time=window["begin_time"],
        end_time=window["end_time"],
        acc_type="on",
    )

    totals = {t["imei"]: t["totalMileage"] for t in km["data"]}
    assert all(v > 0 for v in totals.values())
    for row in metres["data"]:
        assert row["totalMileage"] == pytest.approx(
            totals[row["imei"]] * 1000, rel=1e-3
        )
    rows = [r for page in pages for r in page["result"]]
    keys = [(r["imei"], r["alertTime"], r["alertTypeId"]) for r in rows]
    assert len(pages[0]["result"]) == 20 and len(keys) == len(set(keys))
    assert pages[-1]["result"] == [] or len(rows) == 100
    assert month["code"] == 1001
    assert parking["result"] is None
    iso_z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert parking["data"]["rows"], "truck-A and truck-B stand still for minutes"
    for row in parking["data"]["rows"]:
        assert iso_z.match(row["startTime"]) and iso_z.match(row["endTime"])
        assert isinstance(row["durSecond"], str) and int(row["durSecond"]) >= 120
        assert row["acc"] == "on", "the trucks stand with the ignition on: idling"
    assert parking["data"]["dataTotalRows"] == str(len(parking["data"]["rows"]))


async def test_fault_injection_and_token_budget(fake):
    access = await token(fake)
    target = fake.api.config.user_id
    fake.api.configure(
        {
            "fail_every": 2,
            "fail_code": -1,
            "fail_methods": ["jimi.user.device.list"],
            "token_window_calls": 2,
        }
    )

    codes = [
        (await request(fake, "jimi.user.device.list", token=access, target=target))[
            "code"
        ]
        for _ in range(4)
    ]
    tokens = [
        (
            await request(
                fake,
                "jimi.oauth.token.get",
                user_id=target,
                user_pwd_md5=fake.api.config.user_pwd_md5,
            )
        )["code"]
        for _ in range(2)
    ]

    assert codes == [0, -1, 0, -1]
    # One token was already issued in this window: the budget of two is spent.
    assert tokens == [0, 1006]
    bad = await fake.http.post(
        fake.base_url.replace("/route/rest", "/_fake/config"), json={"nope": 1}
    )
    assert bad.status_code == 400
    calls = (
        await fake.http.get(fake.base_url.replace("/route/rest", "/_fake/calls"))
    ).json()
    assert calls and all("access_token" not in c["params"] for c in calls)
    assert all("user_pwd_md5" not in c["params"] for c in calls)


async def test_fake_platform_command_serves_until_sigterm():
    port = free_port()
    env = {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "FLEETSTREAM_FAKE_PLATFORM_PORT": str(port),
        "FLEETSTREAM_FAKE_PUSH_URL": "",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "fake-platform",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    config = FakeConfig()
    form = {
        "method": "jimi.oauth.token.get",
        "timestamp": format_time(datetime.now(UTC)),
        "app_key": config.app_key,
        "v": "1.0",
        "user_id": config.user_id,
        "user_pwd_md5": config.user_pwd_md5,
    }
    form["sign"] = sign(form, config.app_secret)
    body = None
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            try:
                response = await http.post(
                    f"http://127.0.0.1:{port}/route/rest", data=form
                )
                body = response.json()
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)

    assert body is not None and body["code"] == 0, stderr.decode()[-2000:]
    assert len(body["result"]["accessToken"]) == 32
    assert process.returncode == 0
    assert "fake platform stopped after 1 calls" in stderr.decode()


async def test_calls_per_window_are_limited(fake):
    access = await token(fake)
    target = fake.api.config.user_id
    fake.api.configure({"window_calls": 3, "window_seconds": 0.5})

    def listing():
        return request(fake, "jimi.user.device.list", token=access, target=target)

    burst = [(await listing())["code"] for _ in range(5)]
    await asyncio.sleep(0.6)
    after = (await listing())["code"]

    assert burst == [0, 0, 0, 1006, 1006]
    assert after == 0


async def test_trip_report_names_a_trip_by_its_real_start_in_every_window(fake):
    access = await token(fake)
    now = datetime.now(UTC)
    imei = IMEI["truck-B"]

    async def trips(since: timedelta) -> list[dict]:
        body = await request(
            fake,
            "jimi.device.track.mileage",
            token=access,
            imeis=imei,
            begin_time=format_time(now - since),
            end_time=format_time(now),
        )
        return body["result"]

    whole = await trips(timedelta(hours=3))
    tail = await trips(timedelta(minutes=20))

    assert whole and tail
    assert [t["startTime"] for t in tail] == [t["startTime"] for t in whole][-1:]
    assert tail[-1] == whole[-1]

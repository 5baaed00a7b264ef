"""HTTP front of the fake Tracksolid platform, standalone or inside a test.

``POST|GET /route/rest`` answers Open API calls (form body and query string are
merged); ``POST /_fake/config`` changes fault injection and limits at run time
(JSON object of :class:`FakeConfig` fields, plus ``advance_clock_seconds``);
``GET /_fake/calls`` lists the calls answered so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fakeplatform.openapi import FakeConfig, FakeOpenApi
from fakeplatform.pusher import pusher_from_settings
from fakeplatform.traces import Replay, load_traces
from fleetstream.embedded import free_port
from fleetstream.runtime import run_until_stopped
from fleetstream.settings import Settings

logger = logging.getLogger(__name__)

# The standalone fake starts its replay this far in the past, so history
# exists from the first request.
HISTORY_AT_START = timedelta(hours=1)


def create_app(config: FakeConfig, replay: Replay) -> Starlette:
    """Return the ASGI app of a fake platform serving ``replay``."""
    api = FakeOpenApi(config, replay)

    async def route_rest(request: Request) -> JSONResponse:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        return JSONResponse(api.handle(params))

    async def set_config(request: Request) -> JSONResponse:
        try:
            api.configure(await request.json())
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(asdict(api.config))

    async def calls(request: Request) -> JSONResponse:
        return JSONResponse([asdict(call) for call in api.calls])

    app = Starlette(
        routes=[
            Route("/route/rest", route_rest, methods=["GET", "POST"]),
            Route("/_fake/config", set_config, methods=["POST"]),
            Route("/_fake/calls", calls, methods=["GET"]),
        ]
    )
    app.state.api = api
    return app


class FakePlatform:
    """Run the fake platform's HTTP server in the current event loop."""

    def __init__(
        self,
        config: FakeConfig,
        replay: Replay,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.app = create_app(config, replay)
        self.api: FakeOpenApi = self.app.state.api
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_level="warning",
                lifespan="off",
            )
        )
        self._task: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        """Return the Open API URL, the value of ``tracksolid_base_url``."""
        return f"http://{self.host}:{self.port}/route/rest"

    async def start(self) -> FakePlatform:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        logger.info("fake platform listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> FakePlatform:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def config_from(settings: Settings) -> FakeConfig:
    """Return a fake config that accepts the credentials in ``settings``."""
    config = FakeConfig()
    if settings.tracksolid_app_key:
        config.app_key = settings.tracksolid_app_key
    secret = settings.tracksolid_app_secret.get_secret_value()
    if secret:
        config.app_secret = secret
    if settings.tracksolid_user_id:
        config.user_id = settings.tracksolid_user_id
    pwd = settings.tracksolid_user_pwd_md5.get_secret_value()
    if pwd:
        config.user_pwd_md5 = pwd
    # One overspeed limit for the alarms the fake lists and the ones it pushes.
    config.overspeed_kmh = settings.fake_push_overspeed_kmh
    return config


def main(settings: Settings) -> None:
    """Serve the Open API, and push to ``fake_push_url`` when set, until stopped."""

    async def run(stop: asyncio.Event) -> None:
        start = datetime.now(UTC) - HISTORY_AT_START
        replay = Replay(load_traces(), start, speedup=settings.fake_speedup, loop=True)
        platform = FakePlatform(
            config_from(settings),
            replay,
            settings.fake_platform_host,
            settings.fake_platform_port,
        )
        pusher = pusher_from_settings(replay, settings)
        async with platform:
            if pusher is None:
                await stop.wait()
            else:
                await pusher.run(stop)
        logger.info("fake platform stopped after %d calls", len(platform.api.calls))

    run_until_stopped(run)

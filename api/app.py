"""The reporting API: the map endpoints, health, docs and the refresh loop.

The maps and the Swagger UI are served from ``api/static`` with every script
vendored, so nothing is fetched from the network at run time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api import health, maps, routes
from api.inputs import brief_errors
from api.limits import BodyLimit
from api.refresh import run_refresh_loop
from fleetstream import logs
from fleetstream.db import create_pool
from fleetstream.runtime import run_until_stopped, serve_http
from fleetstream.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SWAGGER = "/static/vendor/swagger-ui"


def create_app(settings: Settings, *, refresh_views: bool = True) -> FastAPI:
    """Return the API; ``refresh_views=False`` leaves out the refresh loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        app.state.pool = pool
        stop = asyncio.Event()
        refresher = None
        if refresh_views:
            interval = settings.vtrips_refresh_interval_seconds
            refresher = asyncio.create_task(run_refresh_loop(pool, interval, stop))
        logger.info("api ready")
        try:
            yield
        finally:
            stop.set()
            if refresher is not None:
                await refresher
            await pool.close()
            logger.info("api stopped")

    app = FastAPI(
        title="fleetstream reporting API",
        summary="Live positions, vehicle tracks and trips for the fleet maps.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Innermost of the middlewares, so its 413 passes CORS like any answer.
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    # The live positions of a few thousand vehicles are close to a megabyte of
    # JSON every poll; compressed they are about a tenth of that.
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    origins = [o.strip() for o in settings.api_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            max_age=3600,
        )
    app.include_router(routes.router)
    app.include_router(health.router)
    app.include_router(maps.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(asyncpg.UndefinedFunctionError, _schema_missing)
    app.add_exception_handler(asyncpg.UndefinedTableError, _schema_missing)
    app.add_exception_handler(asyncpg.InvalidSchemaNameError, _schema_missing)
    # A value the database or the driver cannot take is the caller's to fix.
    app.add_exception_handler(asyncpg.DataError, _value_refused)
    app.add_exception_handler(asyncpg_base.DataError, _value_refused)
    app.add_exception_handler(OverflowError, _value_refused)
    app.add_exception_handler(UnicodeError, _value_refused)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    app.add_exception_handler(OSError, _database_unavailable)
    app.add_exception_handler(asyncpg.InterfaceError, _database_unavailable)
    app.add_exception_handler(asyncpg.CannotConnectNowError, _database_unavailable)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    return app


async def _invalid_request(
    request: Request, exc: RequestValidationError
) -> JSONResponse:
    # FastAPI's own answer quotes every value sent: megabytes for a long list.
    errors = exc.errors()
    logger.debug("%d validation errors for %s", len(errors), request.url.path)
    return JSONResponse({"detail": brief_errors(errors)}, status_code=422)


async def _schema_missing(request: Request, exc: Exception) -> JSONResponse:
    logger.error("reporting object missing for %s: %s", request.url.path, exc)
    return JSONResponse(
        {
            "detail": f"the reporting layer is not migrated ({exc}); "
            "run `fleetstream migrate`"
        },
        status_code=503,
    )


# SQLSTATE classes of a database that is busy, restarting or cut off: retry later.
# 08 connection, 40 serialization or deadlock, 53 resources, 55 lock not
# available, 57 query cancelled (statement timeout) or server shutting down.
UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57"})


async def _value_refused(request: Request, exc: Exception) -> JSONResponse:
    logger.info("input refused for %s: %s", request.url.path, type(exc).__name__)
    # The first line names the problem; it may quote the caller's own value.
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    error = {
        "type": "value_error",
        "loc": ["request"],
        "msg": f"a value in the request cannot be used: {reason}",
    }
    return JSONResponse({"detail": [error]}, status_code=422)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    state = getattr(exc, "sqlstate", None) or ""
    if state[:2] in UNAVAILABLE_CLASSES:
        return await _database_unavailable(request, exc)
    logger.error(
        "database error %s for %s: %s", state, request.url.path, type(exc).__name__
    )
    return JSONResponse(
        {"detail": f"the database failed the request (SQLSTATE {state})"},
        status_code=500,
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable for %s: %s", request.url.path, exc)
    return JSONResponse(
        {"detail": f"database unavailable: {type(exc).__name__}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def app_from_environment() -> FastAPI:
    """Return the API configured from the environment, for one worker process.

    ``fleetstream api`` with ``FLEETSTREAM_API_WORKERS=2`` (or ``uvicorn --factory
    api.app:app_from_environment --workers 2``) starts one per worker; each runs
    the refresh loop and the advisory lock keeps the refresh to one of them.
    """
    settings = get_settings()
    logs.configure(settings.log_level, stage="api")
    return create_app(settings)


def main(settings: Settings) -> None:
    """Serve the API on ``settings.api_host:api_port`` until SIGTERM or SIGINT.

    With several workers uvicorn starts fresh processes, which read their
    settings from the environment rather than from ``settings``.
    """
    options = {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "proxy_headers": True,
    }
    if settings.api_workers > 1:
        logger.info("starting %d api workers", settings.api_workers)
        uvicorn.run(
            f"{__name__}:app_from_environment",
            factory=True,
            workers=settings.api_workers,
            **options,
        )
        return
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
    run_until_stopped(lambda stop: serve_http(server, stop))

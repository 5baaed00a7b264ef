"""Liveness and readiness: is the database there, and is the reporting layer?"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.rows import json_row

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0
DB_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
REQUIRED = (
    "reporting.fn_live_positions",
    "reporting.fn_vehicle_track",
    "reporting.fn_trips_for_map",
    "reporting.normalize_plate",
    "reporting.v_trips",
    "reporting.v_filter_vehicles",
    "reporting.v_filter_drivers",
    "reporting.v_filter_cost_centres",
    "reporting.v_filter_cities",
    "reporting.refresh_log",
    "reporting.refresh_v_trips",
    "tracksolid.live_positions",
)


@router.get("/healthz", summary="The database answers")
async def healthz(request: Request) -> JSONResponse:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await request.app.state.pool.fetchval("SELECT 1")
    except DB_ERRORS as exc:
        logger.warning("health check failed: %s", type(exc).__name__)
        return JSONResponse(
            {"status": "unavailable", "reason": f"database: {type(exc).__name__}"},
            status_code=503,
        )
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness and a few freshness figures")
async def readyz(request: Request) -> JSONResponse:
    """Report missing reporting objects, the last refresh and the newest fix."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            body = await _readiness(request.app.state.pool)
    except DB_ERRORS as exc:
        return JSONResponse(
            {"ready": False, "reason": f"database: {type(exc).__name__}"},
            status_code=503,
        )
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


async def _readiness(pool: asyncpg.Pool) -> dict:
    async with pool.acquire() as conn:
        missing = await conn.fetchval(
            "SELECT coalesce(array_agg(name ORDER BY name), '{}')"
            " FROM unnest($1::text[]) AS name"
            " WHERE to_regclass(name) IS NULL AND NOT EXISTS ("
            " SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname || '.' || p.proname = name)",
            list(REQUIRED),
        )
        body: dict = {"ready": not missing, "missing": list(missing)}
        if "reporting.refresh_log" not in missing:
            last = await conn.fetchrow(
                "SELECT started_at, finished_at, ok, row_count, extract(epoch FROM"
                " clock_timestamp() - started_at)::float8 AS age_seconds"
                " FROM reporting.refresh_log WHERE relation = 'reporting.v_trips'"
                " ORDER BY started_at DESC LIMIT 1"
            )
            body["last_refresh"] = json_row(last) if last else None
        if "tracksolid.live_positions" in missing:
            return body
        fixes = await conn.fetchrow(
            "SELECT count(*) AS live_vehicles, extract(epoch FROM clock_timestamp()"
            " - max(gps_time))::float8 AS newest_fix_age_seconds"
            " FROM tracksolid.live_positions"
        )
        body.update(json_row(fixes))
    return body

"""Keep the materialized reporting relations fresh from inside the API.

Every API worker runs the loop. ``pg_try_advisory_lock`` lets one worker refresh
while the others skip, and the start time of the last run recorded in
``reporting.refresh_log`` stops a second worker from refreshing again in the same
interval right after the first one released the lock. So however many workers
run, the views are refreshed about once per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from fleetstream.runtime import sleep_or_stop

logger = logging.getLogger(__name__)

REFRESH_LOCK_KEY = 920145
TRIPS_VIEW = "reporting.v_trips"
# Refreshed only where the migrations make it a materialized view: on TimescaleDB
# it is a continuous aggregate that a policy keeps up to date.
MILEAGE_VIEW = "reporting.v_mileage_daily"
# Creates the coming months' partitions on plain PostgreSQL; a no-op on TimescaleDB.
PARTITION_MAINTENANCE = "tracksolid.ensure_partitions(interval)"


@dataclass(frozen=True)
class RefreshRun:
    """One recorded refresh of a relation: outcome, rows after it, duration."""

    relation: str
    ok: bool
    rows: int | None
    seconds: float
    error: str | None = None


async def refresh_once(pool: asyncpg.Pool, interval_seconds: float) -> list[RefreshRun]:
    """Refresh and record every derived relation, unless another worker does.

    Return the recorded runs, or an empty list when this worker skipped.
    """
    async with pool.acquire() as conn:
        lock = "SELECT pg_try_advisory_lock($1)"
        if not await conn.fetchval(lock, REFRESH_LOCK_KEY):
            logger.debug("refresh skipped: another worker holds the lock")
            return []
        try:
            if await _ran_within(conn, interval_seconds / 2):
                logger.debug("refresh skipped: another worker refreshed just now")
                return []
            return await _refresh_all(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", REFRESH_LOCK_KEY)


async def run_refresh_loop(
    pool: asyncpg.Pool, interval_seconds: float, stop: asyncio.Event
) -> None:
    """Refresh now and then every ``interval_seconds`` until ``stop`` is set."""
    logger.info("refresh loop started, every %.0f s", interval_seconds)
    while not stop.is_set():
        try:
            await refresh_once(pool, interval_seconds)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            logger.warning(
                "refresh not run, next try in %.0f s: %s", interval_seconds, exc
            )
        if await sleep_or_stop(stop, interval_seconds):
            break
    logger.info("refresh loop stopped")


async def _ran_within(conn: asyncpg.Connection, seconds: float) -> bool:
    return await conn.fetchval(
        "SELECT coalesce(max(started_at) > clock_timestamp()"
        " - make_interval(secs => $2), false)"
        " FROM reporting.refresh_log WHERE relation = $1",
        TRIPS_VIEW,
        seconds,
    )


async def _refresh_all(conn: asyncpg.Connection) -> list[RefreshRun]:
    runs = [await _refresh_and_record(conn, TRIPS_VIEW)]
    mileage_kind = await conn.fetchval(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass($1)", MILEAGE_VIEW
    )
    if mileage_kind == "m":
        runs.append(await _refresh_and_record(conn, MILEAGE_VIEW))
    maintenance = "SELECT to_regprocedure($1) IS NOT NULL"
    if await conn.fetchval(maintenance, PARTITION_MAINTENANCE):
        created = await conn.fetchval("SELECT tracksolid.ensure_partitions()")
        if created:
            logger.info("created %d partitions ahead", created)
    return runs


async def _refresh_and_record(conn: asyncpg.Connection, relation: str) -> RefreshRun:
    started = await conn.fetchval("SELECT clock_timestamp()")
    clock = time.monotonic()
    try:
        await _refresh_view(conn, relation)
        rows = await conn.fetchval(f"SELECT count(*) FROM {relation}")
        run = RefreshRun(relation, True, rows, time.monotonic() - clock)
    except asyncpg.PostgresError as exc:
        run = RefreshRun(relation, False, None, time.monotonic() - clock, str(exc))

    await conn.execute(
        "INSERT INTO reporting.refresh_log"
        " (relation, started_at, finished_at, row_count, ok, error)"
        " VALUES ($1, $2, clock_timestamp(), $3, $4, $5)",
        relation,
        started,
        run.rows,
        run.ok,
        run.error,
    )
    if run.ok:
        logger.info("refreshed %s: %d rows in %.3f s", relation, run.rows, run.seconds)
    else:
        logger.warning(
            "refresh of %s failed after %.3f s, stale until the next run: %s",
            relation,
            run.seconds,
            run.error,
        )
    return run


async def _refresh_view(conn: asyncpg.Connection, name: str) -> None:
    # CONCURRENTLY keeps the view readable during the refresh but refuses a view
    # that was never populated (created WITH NO DATA), which needs one plain run.
    populated = await conn.fetchval(
        "SELECT relispopulated FROM pg_class WHERE oid = to_regclass($1)", name
    )
    concurrently = "CONCURRENTLY " if populated else ""
    await conn.execute(f"REFRESH MATERIALIZED VIEW {concurrently}{name}")

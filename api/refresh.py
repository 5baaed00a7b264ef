"""Keep the derived reporting relations fresh from inside the API.

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
# Plain PostgreSQL only: the table standing in for the continuous aggregate. On
# TimescaleDB it is the aggregate itself, kept up to date by a policy, and the
# refresh function is a no-op that the loop does not call.
MILEAGE_TABLE = "tracksolid.v_mileage_daily_cagg"
# Recomputes every device-day of the last 30 days that got a fix stored since the
# previous run, today's included, as the continuous aggregate's policy does, so
# that fixes arriving days late (buffered by a device out of coverage, committed
# after an outage or a replay) still count. Older days, e.g. after a backfill,
# need
# ``SELECT tracksolid.refresh_mileage_daily(from, to)``.
MILEAGE_REFRESH = "tracksolid.refresh_mileage_daily_changes(interval,interval)"
# Creates the coming months' partitions on plain PostgreSQL; a no-op on TimescaleDB.
PARTITION_MAINTENANCE = "tracksolid.ensure_partitions(interval)"


@dataclass(frozen=True)
class RefreshRun:
    """One refresh of a relation: outcome, rows written or held, duration."""

    relation: str
    ok: bool
    rows: int | None
    seconds: float
    error: str | None = None


async def refresh_once(pool: asyncpg.Pool, interval_seconds: float) -> list[RefreshRun]:
    """Refresh every derived relation, unless another worker does it.

    Return the runs, each recorded in ``reporting.refresh_log``, or an empty list
    when this worker skipped.
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
    runs = [await _run(conn, TRIPS_VIEW, "SELECT reporting.refresh_v_trips()")]
    if await _is_table(conn, MILEAGE_TABLE) and await _exists(conn, MILEAGE_REFRESH):
        runs.append(
            await _run(
                conn,
                MILEAGE_TABLE,
                "SELECT tracksolid.refresh_mileage_daily_changes()",
            )
        )
    if await _exists(conn, PARTITION_MAINTENANCE):
        created = await conn.fetchval("SELECT tracksolid.ensure_partitions()")
        if created:
            logger.info("created %d partitions ahead", created)
    return runs


async def _is_table(conn: asyncpg.Connection, name: str) -> bool:
    kind = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", name
    )
    return kind in ("r", "p")


async def _exists(conn: asyncpg.Connection, signature: str) -> bool:
    return await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", signature)


async def _run(
    conn: asyncpg.Connection, relation: str, sql: str, *args: object
) -> RefreshRun:
    """Run one refresh function; it logs its success, a failure is logged here."""
    started = await conn.fetchval("SELECT clock_timestamp()")
    clock = time.monotonic()
    try:
        rows = await conn.fetchval(sql, *args)
    except asyncpg.PostgresError as exc:
        run = RefreshRun(relation, False, None, time.monotonic() - clock, str(exc))
        await conn.execute(
            "INSERT INTO reporting.refresh_log"
            " (relation, started_at, finished_at, ok, error)"
            " VALUES ($1, $2, clock_timestamp(), false, $3)",
            relation,
            started,
            run.error,
        )
        logger.warning(
            "refresh of %s failed after %.3f s, stale until the next run: %s",
            relation,
            run.seconds,
            run.error,
        )
        return run
    run = RefreshRun(relation, True, rows, time.monotonic() - clock)
    logger.info("refreshed %s: %s rows in %.3f s", relation, rows, run.seconds)
    return run

"""Backfill: pull a past period of tracks and alarms from the Open API into raw topics.

The period is cut into windows the platform accepts (track.list: one device,
at most 7 days; alarm.list: up to 100 devices, at most a month). Windows touch
without overlapping: the platform's times are whole seconds, so ``[a, b - 1 s]``
and ``[b, ...]`` cover every fix once. Each finished window is recorded in
``tracksolid.backfill_progress`` after Kafka acknowledged its records, so a
rerun of the same command skips what is done. Records carry ``source=backfill``.

Calls are paced by ``backfill_call_interval_seconds``; an IP limit (1005), a
refused token or a rate limit that outlasts the client's retries stops the run,
with its progress kept, because continuing would only deepen the refusal. Without
``--imei`` the device registry is read first, and published like the poll
worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetstream.db import create_pool
from fleetstream.errors import ConfigError
from fleetstream.kafka import make_producer
from fleetstream.runtime import run_until_stopped, sleep_or_stop
from fleetstream.settings import Settings
from producers.client import ApiError, TracksolidClient
from producers.poll import (
    ALARM_LIST,
    MAX_ALARM_IMEIS,
    MAX_ALARM_WINDOW,
    MAX_TRACK_WINDOW,
    PLATFORM_REFUSALS,
    SECOND,
    TRACK_LIST,
    Poller,
    chunks,
    worker_name,
)
from producers.publish import RawPublisher

logger = logging.getLogger(__name__)


def parse_moment(text: str) -> datetime:
    """Parse a command-line time (ISO 8601 or ``yyyy-MM-dd HH:mm:ss``), UTC if naive."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"cannot read {text!r} as a time", hint="use e.g. 2025-03-01T00:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def windows(
    begin: datetime, end: datetime, longest: timedelta
) -> list[tuple[datetime, datetime]]:
    """Cut ``[begin, end)`` into adjacent windows of at most ``longest``."""
    spans = []
    while begin < end:
        stop = min(begin + longest, end)
        spans.append((begin, stop - SECOND))
        begin = stop
    return spans


@dataclass
class Unit:
    """One device's (or device batch's) windows of one method."""

    method: str
    key: str
    imeis: list[str]
    spans: list[tuple[datetime, datetime]]


@dataclass
class Outcome:
    """What a backfill run did."""

    windows_total: int = 0
    windows_done: int = 0
    windows_skipped: int = 0
    records: int = 0


async def unless_stopped(
    work: Coroutine[Any, Any, int], stop: asyncio.Event | None
) -> int | None:
    """Return what ``work`` returns, or None if ``stop`` is set first.

    A window cut short is not recorded as done, so a rerun fetches it again;
    records it already published are published twice, which downstream
    de-duplication absorbs. Without this a SIGTERM would wait out the
    client's back-off, up to minutes.
    """
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def job_id(begin: datetime, end: datetime, imeis: list[str] | None) -> str:
    """Return a stable name for a backfill of this period and device selection."""
    scope = ",".join(sorted(imeis)) if imeis else "all"
    digest = hashlib.sha1(scope.encode()).hexdigest()[:12]
    return f"{begin.isoformat()}..{end.isoformat()}:{digest}"


class Backfill:
    """Run one backfill job, resuming from its recorded progress."""

    def __init__(self, settings: Settings, client, pool, poller: Poller) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.poller = poller
        self.outcome = Outcome()

    def plan(self, imeis: list[str], begin: datetime, end: datetime) -> list[Unit]:
        units = [
            Unit(TRACK_LIST, imei, [imei], windows(begin, end, MAX_TRACK_WINDOW))
            for imei in imeis
        ]
        for batch in chunks(sorted(imeis), MAX_ALARM_IMEIS):
            key = hashlib.sha1(",".join(batch).encode()).hexdigest()[:12]
            spans = windows(begin, end, MAX_ALARM_WINDOW)
            units.append(Unit(ALARM_LIST, f"{len(batch)}:{key}", batch, spans))
        return units

    async def done_until(self, job: str) -> dict[tuple[str, str], datetime]:
        rows = await self.pool.fetch(
            "SELECT method, key, done_until FROM tracksolid.backfill_progress"
            " WHERE job = $1",
            job,
        )
        return {(r["method"], r["key"]): r["done_until"] for r in rows}

    async def record(self, job: str, unit: Unit, until: datetime) -> None:
        await self.pool.execute(
            "INSERT INTO tracksolid.backfill_progress (job, method, key, done_until)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (job, method, key) DO UPDATE SET"
            " done_until = EXCLUDED.done_until, updated_at = now()",
            job,
            unit.method,
            unit.key,
            until,
        )

    async def run(
        self, job: str, units: list[Unit], stop: asyncio.Event | None = None
    ) -> Outcome:
        done = await self.done_until(job)
        outcome = self.outcome
        outcome.windows_total = sum(len(u.spans) for u in units)
        started = time.monotonic()
        for unit in units:
            finished = done.get((unit.method, unit.key))
            fetch = self._fetcher(unit)
            for begin, end in unit.spans:
                if finished is not None and end <= finished:
                    outcome.windows_skipped += 1
                    continue
                try:
                    records = await unless_stopped(fetch(begin, end), stop)
                except PLATFORM_REFUSALS:
                    logger.error("backfill %s paused by the platform's limits", job)
                    raise
                except ApiError as exc:
                    logger.warning(
                        "%s of %s skipped, rerun to retry: %s",
                        unit.method,
                        unit.key,
                        exc,
                    )
                    break
                if records is None:
                    logger.info("backfill %s stopped; rerun to resume", job)
                    return outcome
                outcome.records += records
                await self.record(job, unit, end)
                outcome.windows_done += 1
                self._report(job, started)
                pause = self.settings.backfill_call_interval_seconds
                if stop is None:
                    await asyncio.sleep(pause)
                elif await sleep_or_stop(stop, pause):
                    logger.info("backfill %s stopped; rerun to resume", job)
                    return outcome
        return outcome

    def _fetcher(self, unit: Unit) -> Callable[[datetime, datetime], Awaitable[int]]:
        if unit.method == TRACK_LIST:
            return lambda begin, end: self._track_window(unit.imeis[0], begin, end)
        return lambda begin, end: self.poller.alarm_window(unit.imeis, begin, end)

    async def _track_window(self, imei: str, begin: datetime, end: datetime) -> int:
        envelope = await self.client.call(
            TRACK_LIST, imei=imei, begin_time=begin, end_time=end
        )
        return await self.poller.publisher.publish(
            TRACK_LIST, envelope.elements(), request_id=envelope.request_id, imei=imei
        )

    def _report(self, job: str, started: float) -> None:
        outcome = self.outcome
        done = outcome.windows_done + outcome.windows_skipped
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = outcome.windows_done / elapsed * 60
        left = outcome.windows_total - done
        eta = left / rate * 60 if rate else float("inf")
        logger.info(
            "backfill %s: %d/%d windows, %d records, %.1f windows/min, %.0f s left",
            job,
            done,
            outcome.windows_total,
            outcome.records,
            rate,
            eta,
        )


async def run_backfill(
    settings: Settings,
    begin: datetime,
    end: datetime,
    imeis: list[str] | None,
    stop: asyncio.Event | None = None,
) -> Outcome:
    """Backfill ``[begin, end)`` for ``imeis`` (every device when None)."""
    # The job is named after the period asked for, so a rerun finds its
    # progress even when the period reaches past now and is cut short.
    job = job_id(begin, end, imeis)
    end = min(end, datetime.now(UTC).replace(microsecond=0))
    if end <= begin:
        raise ConfigError(f"nothing to backfill between {begin} and {end}")
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    client = TracksolidClient(settings, pool, worker=worker_name("backfill"))
    producer = make_producer(settings)
    await producer.start()
    try:
        publisher = RawPublisher(producer, settings, "backfill")
        poller = Poller(settings, client, pool, publisher)
        devices = list(imeis) if imeis else await poller.poll_devices()
        backfill = Backfill(settings, client, pool, poller)
        units = backfill.plan(devices, begin, end)
        logger.info(
            "backfill %s: %d devices, %d windows",
            job,
            len(devices),
            sum(len(unit.spans) for unit in units),
        )
        outcome = await backfill.run(job, units, stop)
        logger.info(
            "backfill %s finished: %d windows fetched, %d already done, %d records",
            job,
            outcome.windows_done,
            outcome.windows_skipped,
            outcome.records,
        )
        return outcome
    finally:
        await producer.stop()
        await client.aclose()
        await pool.close()


def main(
    settings: Settings, start: str, end: str, imeis: list[str] | None = None
) -> None:
    """Run ``fleetstream backfill --from START --to END [--imei ...]``."""
    begin, finish = parse_moment(start), parse_moment(end)

    async def run(stop: asyncio.Event) -> None:
        await run_backfill(settings, begin, finish, imeis, stop)

    run_until_stopped(run)

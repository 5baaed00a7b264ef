"""The poll worker: the Open API's devices, live locations and history into raw topics.

Three schedules run side by side: the device registry (and sub-accounts), live
locations (``location.list`` per account, then ``location.get`` for devices the
list silently left out), and history: track points per device; alarms, trips
and parking/idling reports per batch of devices.

History is read in windows that start ``poll_tracks_overlap_seconds`` before the
device's watermark, so points the platform receives late are still caught. A
watermark (``tracksolid.poll_watermarks``) advances only after Kafka has
acknowledged every record of its window. Delivery is therefore at least once:
records in the overlap, and those of a window in flight when the worker dies,
are published again; downstream dedupes on ``(imei, gps_time)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from fleetstream.db import create_pool
from fleetstream.errors import FleetstreamError
from fleetstream.runtime import run_until_stopped, sleep_or_stop
from fleetstream.settings import Settings
from producers.client import (
    PARAM_ERROR,
    ApiError,
    Envelope,
    IpLimitError,
    RetriesExhausted,
    TokenError,
    TracksolidClient,
)
from producers.publish import RawPublisher, record_imei, started_producer

logger = logging.getLogger(__name__)

CHILD_LIST = "jimi.user.child.list"
DEVICE_LIST = "jimi.user.device.list"
LOCATION_LIST = "jimi.user.device.location.list"
LOCATION_GET = "jimi.device.location.get"
TRACK_LIST = "jimi.device.track.list"
TRACK_MILEAGE = "jimi.device.track.mileage"
ALARM_LIST = "jimi.device.alarm.list"
PARKING = "jimi.open.platform.report.parking"

SECOND = timedelta(seconds=1)
MAX_LOCATION_IMEIS = 100
MAX_ALARM_IMEIS = 100
MILEAGE_BATCH = 50
ALARM_PAGE_SIZE = 100
# (first start_row, page_size) pairs for report.parking, tried in this order
# after a 1001: the platform refuses some pairs, and integrators report 1/100,
# 1/50 and 0/100 working on different accounts. 0 comes first because it cannot
# skip a row whether start_row is an offset or counts rows from 1 (then the
# next page re-reads one row, a repeat downstream absorbs); 1 skips the first
# row if start_row is an offset.
PARKING_PAGINGS = ((0, 100), (1, 100), (1, 50))
MAX_ALARM_ROWS = 1000
MAX_TRACK_WINDOW = timedelta(days=7)
MAX_ALARM_WINDOW = timedelta(days=30)
# A window whose alarms fill the platform's row cap is halved down to this.
MIN_ALARM_SPLIT = timedelta(minutes=1)
# Refusals of the whole account end a cycle: more calls would only prolong
# them. Other errors concern one device or batch, and the cycle goes on.
PLATFORM_REFUSALS = (IpLimitError, RetriesExhausted, TokenError)


def worker_name(stage: str) -> str:
    """Return ``stage@host:pid``, the worker recorded with each API call."""
    return f"{stage}@{socket.gethostname()}:{os.getpid()}"


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _count(value) -> int:
    """Return a count the platform may send as a number or a string."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


async def load_watermarks(pool, method: str, imeis: Iterable[str]) -> dict:
    rows = await pool.fetch(
        "SELECT imei, watermark FROM tracksolid.poll_watermarks"
        " WHERE method = $1 AND imei = ANY($2::text[])",
        method,
        list(imeis),
    )
    return {row["imei"]: row["watermark"] for row in rows}


async def save_watermarks(
    pool, method: str, imeis: Iterable[str], mark: datetime
) -> None:
    """Move the watermarks of ``imeis`` forward to ``mark``; never backwards."""
    await pool.executemany(
        "INSERT INTO tracksolid.poll_watermarks (imei, method, watermark)"
        " VALUES ($1, $2, $3) ON CONFLICT (imei, method) DO UPDATE SET"
        " watermark = GREATEST(poll_watermarks.watermark, EXCLUDED.watermark),"
        " updated_at = now()",
        [(imei, method, mark) for imei in imeis],
    )


def next_window(
    mark: datetime, limit: datetime, overlap: timedelta, longest: timedelta
) -> tuple[datetime, datetime]:
    """Return the window after ``mark``, re-reading ``overlap``, at most ``longest``."""
    step = longest - overlap if longest > overlap else longest / 2
    end = min(mark + step, limit)
    begin = max(mark - overlap, end - longest)
    return begin, end


class Poller:
    """Poll one Open API account (and its sub-accounts) into raw topics."""

    def __init__(
        self,
        settings: Settings,
        client: TracksolidClient,
        pool,
        publisher: RawPublisher,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.publisher = publisher
        self.clock = clock
        self.target = settings.tracksolid_target or settings.tracksolid_user_id
        self.accounts: list[str] = [self.target]
        self.devices: list[str] = []
        self.overlap = timedelta(seconds=settings.poll_tracks_overlap_seconds)
        self.track_window = min(
            timedelta(seconds=settings.poll_tracks_window_seconds), MAX_TRACK_WINDOW
        )
        # The parking paging the platform last accepted, kept across windows.
        self.parking_paging = 0

    async def _publish(self, envelope: Envelope, imei: str | None = None) -> int:
        return await self.publisher.publish(
            envelope.method,
            envelope.elements(),
            request_id=envelope.request_id,
            imei=imei,
        )

    async def poll_devices(self) -> list[str]:
        """Publish the registry of the account and its sub-accounts; keep the IMEIs."""
        accounts = [self.target]
        try:
            children = await self.client.call(CHILD_LIST, target=self.target)
            accounts += [
                str(c["account"]) for c in children.records() if c.get("account")
            ]
        except ApiError as exc:
            logger.warning(
                "sub-accounts not listed, polling %s only: %s", accounts, exc
            )
        devices: dict[str, None] = {}
        for account in accounts:
            envelope = await self.client.call(DEVICE_LIST, target=account)
            await self._publish(envelope)
            devices.update((i, None) for i in map(record_imei, envelope.records()) if i)
        self.accounts, self.devices = accounts, list(devices)
        logger.info(
            "registry: %d devices in %d accounts", len(self.devices), len(accounts)
        )
        return self.devices

    async def poll_locations(self) -> int:
        """Publish every device's latest fix; fetch those the list omitted by IMEI."""
        seen: set[str] = set()
        published = 0
        for account in self.accounts:
            envelope = await self.client.call(LOCATION_LIST, target=account)
            published += await self._publish(envelope)
            seen.update(i for i in map(record_imei, envelope.records()) if i)
        missing = [imei for imei in self.devices if imei not in seen]
        for batch in chunks(missing, MAX_LOCATION_IMEIS):
            envelope = await self.client.call(LOCATION_GET, imeis=batch)
            published += await self._publish(envelope)
        if missing:
            logger.info(
                "%d devices missing from location.list fetched by IMEI", len(missing)
            )
        return published

    async def poll_tracks(self) -> int:
        """Catch every device's track up to now, window by window."""
        limit = whole_second(self.clock()) - SECOND
        marks = await load_watermarks(self.pool, TRACK_LIST, self.devices)
        published = 0
        for imei in self.devices:
            mark = marks.get(imei) or limit - self.overlap
            try:
                while mark < limit:
                    begin, end = next_window(
                        mark, limit, self.overlap, self.track_window
                    )
                    envelope = await self.client.call(
                        TRACK_LIST, imei=imei, begin_time=begin, end_time=end
                    )
                    published += await self._publish(envelope, imei=imei)
                    await save_watermarks(self.pool, TRACK_LIST, [imei], end)
                    mark = end
            except PLATFORM_REFUSALS:
                raise
            except ApiError as exc:
                logger.warning("track of %s not polled this cycle: %s", imei, exc)
        return published

    async def poll_alarms(self) -> int:
        """Publish alarms of every device batch since its watermark, page by page."""
        return await self._poll_batches(
            ALARM_LIST, MAX_ALARM_IMEIS, MAX_ALARM_WINDOW, self.alarm_window
        )

    async def poll_trips(self) -> int:
        """Publish the platform's trips (track.mileage) since each watermark."""
        return await self._poll_batches(
            TRACK_MILEAGE, MILEAGE_BATCH, MAX_TRACK_WINDOW, self._mileage_window
        )

    async def poll_parking(self) -> int:
        """Publish the platform's parking and idling reports since each watermark."""
        return await self._poll_batches(
            PARKING, MAX_LOCATION_IMEIS, MAX_ALARM_WINDOW, self.parking_window
        )

    async def parking_window(self, imeis, begin, end) -> int:
        """Publish parking (ignition off) and idling (on) rows of one window.

        A paging the platform refuses with 1001 is replaced by the next of
        ``PARKING_PAGINGS`` (the accepted one is kept for later windows) and the
        rows of that kind are read again from the first page. When every
        paging is refused the error is raised and the window is retried next
        cycle.
        """
        published = 0
        for acc_type in ("off", "on"):
            for attempt in range(len(PARKING_PAGINGS)):
                index = (self.parking_paging + attempt) % len(PARKING_PAGINGS)
                first, size = PARKING_PAGINGS[index]
                try:
                    published += await self._parking_pages(
                        imeis, begin, end, acc_type, first, size
                    )
                except ApiError as exc:
                    if exc.code != PARAM_ERROR or attempt + 1 == len(PARKING_PAGINGS):
                        raise
                    logger.warning(
                        "report.parking refused start_row %d, page_size %d (1001);"
                        " trying the next paging",
                        first,
                        size,
                    )
                    continue
                self.parking_paging = index
                break
        return published

    async def _parking_pages(self, imeis, begin, end, acc_type, first, size) -> int:
        """Publish every page of one kind, starting at ``first``, ``size`` rows each."""
        published = 0
        previous: dict | None = None
        while True:
            envelope = await self.client.call(
                PARKING,
                account=self.target,
                imeis=imeis,
                start_time=begin,
                end_time=end,
                start_row=first + published,
                page_size=size,
                acc_type=acc_type,
            )
            rows = envelope.elements()
            # A platform that ignores start_row serves the first page again.
            if rows and rows[0] == previous:
                logger.warning("report.parking repeated a page; paging stopped")
                return published
            published += await self._publish(envelope)
            total = _count((envelope.data or {}).get("dataTotalRows"))
            if len(rows) < size or 0 < total <= published:
                return published
            previous = rows[0]

    async def _mileage_window(self, imeis, begin, end) -> int:
        envelope = await self.client.call(
            TRACK_MILEAGE, imeis=imeis, begin_time=begin, end_time=end
        )
        return await self._publish(envelope)

    async def alarm_window(self, imeis, begin, end) -> int:
        """Publish the alarms of ``imeis`` in one window, following its pages.

        The platform returns at most 1000 rows per query, so a window that
        fills them is split in two halves, each queried on its own.
        """
        pages = await self._alarm_pages(imeis, begin, end)
        if pages is None:
            middle = whole_second(begin + (end - begin) / 2)
            first = await self.alarm_window(imeis, begin, middle)
            return first + await self.alarm_window(imeis, middle + SECOND, end)
        published = 0
        for envelope in pages:
            published += await self._publish(envelope)
        return published

    async def _alarm_pages(self, imeis, begin, end) -> list[Envelope] | None:
        """Return the pages of one window, or None when they reach the row cap."""
        pages: list[Envelope] = []
        for page in range(1, MAX_ALARM_ROWS // ALARM_PAGE_SIZE + 1):
            envelope = await self.client.call(
                ALARM_LIST,
                imeis=imeis,
                begin_time=begin,
                end_time=end,
                page_no=page,
                page_size=ALARM_PAGE_SIZE,
            )
            rows = envelope.elements()
            # A platform that ignores page_no serves page 1 again: stop there.
            if rows and pages and rows[0] == pages[-1].elements()[0]:
                logger.warning("alarm.list repeated a page; paging stopped at %d", page)
                return pages
            pages.append(envelope)
            if len(rows) < ALARM_PAGE_SIZE:
                return pages
        if end - begin > MIN_ALARM_SPLIT:
            return None
        logger.warning(
            "alarm.list returned its %d-row cap for %d devices within %s..%s;"
            " alarms beyond the cap in that window are lost",
            MAX_ALARM_ROWS,
            len(imeis),
            begin,
            end,
        )
        return pages

    async def _poll_batches(
        self,
        method: str,
        batch_size: int,
        longest: timedelta,
        fetch: Callable[[list[str], datetime, datetime], Awaitable[int]],
    ) -> int:
        limit = whole_second(self.clock()) - SECOND
        marks = await load_watermarks(self.pool, method, self.devices)
        # Devices that share a watermark share calls.
        groups: dict[datetime, list[str]] = {}
        for imei in self.devices:
            groups.setdefault(marks.get(imei) or limit - self.overlap, []).append(imei)
        published = 0
        for start, imeis in sorted(groups.items()):
            for batch in chunks(imeis, batch_size):
                mark = start
                try:
                    while mark < limit:
                        begin, end = next_window(mark, limit, self.overlap, longest)
                        published += await fetch(batch, begin, end)
                        await save_watermarks(self.pool, method, batch, end)
                        mark = end
                except PLATFORM_REFUSALS:
                    raise
                except ApiError as exc:
                    logger.warning(
                        "%s for %d devices not polled this cycle: %s",
                        method,
                        len(batch),
                        exc,
                    )
        return published

    async def poll_history(self) -> int:
        """Poll tracks, alarms, trips and parkings, one after the other."""
        return (
            await self.poll_tracks()
            + await self.poll_alarms()
            + await self.poll_trips()
            + await self.poll_parking()
        )


async def every(
    stop: asyncio.Event,
    seconds: float,
    job: Callable[[], Awaitable[object]],
    *,
    wait_first: bool = False,
) -> None:
    """Run ``job`` every ``seconds`` until ``stop``; a failed run waits its turn."""
    if wait_first and await sleep_or_stop(stop, seconds):
        return
    while not stop.is_set():
        try:
            await job()
        except FleetstreamError as exc:
            logger.warning("%s failed, retrying next cycle: %s", job.__name__, exc)
        except Exception:
            # Broker or database trouble: watermarks stay where the last
            # acknowledged window left them, so the next cycle redoes the rest.
            logger.exception("%s failed, retrying next cycle", job.__name__)
        if await sleep_or_stop(stop, seconds):
            return


async def run_poll(settings: Settings, stop: asyncio.Event) -> None:
    """Poll until ``stop`` is set, then flush the producer and close connections."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    client = TracksolidClient(settings, pool, worker=worker_name("poll"))
    producer = await started_producer(settings, stop)
    if producer is None:
        await client.aclose()
        await pool.close()
        logger.info("poll worker stopped before the broker was reachable")
        return
    publisher = RawPublisher(producer, settings, "poll", replaceable=True)
    tasks: list[asyncio.Task] = []
    try:
        poller = Poller(settings, client, pool, publisher)
        while not poller.devices and not stop.is_set():
            # Locations and history need the device list: wait for it first.
            try:
                await poller.poll_devices()
            except Exception as exc:
                logger.warning("device registry not read, retrying: %s", exc)
            if not poller.devices:
                await sleep_or_stop(stop, settings.poll_locations_interval_seconds)
        tasks = [
            asyncio.create_task(
                every(
                    stop,
                    settings.poll_devices_interval_seconds,
                    poller.poll_devices,
                    wait_first=True,
                )
            ),
            asyncio.create_task(
                every(
                    stop,
                    settings.poll_locations_interval_seconds,
                    poller.poll_locations,
                )
            ),
            asyncio.create_task(
                every(stop, settings.poll_tracks_interval_seconds, poller.poll_history)
            ),
        ]
        await stop.wait()
    finally:
        # A job cut short leaves its watermark where the last acknowledged
        # window put it, so the next run re-reads that window.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The publisher may have replaced the producer it was given.
        await publisher.producer.stop()
        await client.aclose()
        await pool.close()
        logger.info("poll worker stopped")


def main(settings: Settings) -> None:
    """Run the poll worker until SIGTERM or SIGINT."""
    run_until_stopped(lambda stop: run_poll(settings, stop))

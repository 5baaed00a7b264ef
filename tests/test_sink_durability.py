"""A crash of PostgreSQL itself loses no row whose offsets the sink committed.

Under a backlog the sink commits without waiting for the WAL flush, so a
crashed server can lose batches it had already acknowledged to the sink. These
tests crash a server of their own (``pg_ctl stop -m immediate``: no
checkpoint, WAL buffers lost) between two batches, with the WAL writer slowed
to keep those batches unflushed, and check that the sink reads them again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from test_sinks import (
    IMEIS,
    as_row,
    committed,
    fast,
    history,
    position,
    produce,
    running,
    until,
)

from fleetstream.db import with_database
from fleetstream.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from sinks.kinds import POSITION

BATCH = 40
BATCHES = 8
CRASH_AFTER_BATCH = 4
# A stop with the broker gone: four steps bounded by the 3 s request timeout
# of the test's settings, and a margin. Unbounded, it waited forever.
STOP_BOUND_SECONDS = 25


@pytest.fixture
async def crashable_server():
    """A server of this test's own whose WAL writer flushes only every 10 s."""
    server = EmbeddedPostgres(
        Path("/tmp") / f"fs-pg-crash-{uuid.uuid4().hex[:8]}",
        free_port(),
        server_settings={"wal_writer_delay": "10s"},
    )
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(shutil.rmtree, server.data_dir, ignore_errors=True)


async def count_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM tracksolid.position_history")
    finally:
        await conn.close()


@pytest.mark.parametrize("async_commit", [True, False])
async def test_a_database_crash_between_batches_loses_and_duplicates_nothing(
    make_settings, crashable_server, async_commit
):
    from migrations.runner import migrate

    admin = await asyncpg.connect(crashable_server.url)
    await admin.execute('CREATE DATABASE "crashme"')
    await admin.close()
    url = with_database(crashable_server.url, "crashme")
    await migrate(url)
    settings = make_settings(
        database_url=url,
        sink_batch_max_records=BATCH,
        sink_async_commit=async_commit,
    )
    per_device = BATCH * BATCHES // len(IMEIS)
    fixes = [position(imei, m) for imei in IMEIS for m in range(per_device)]
    await produce(settings, "position", fixes)

    seen: dict[str, int] = {}

    async def crash_after_some_batches() -> None:
        seen["batches"] = seen.get("batches", 0) + 1
        if seen["batches"] != CRASH_AFTER_BATCH:
            return
        seen["before"] = await count_rows(url)
        seen["committed"] = sum(
            (await committed(settings, POSITION.group_id(settings))).values()
        )
        await asyncio.to_thread(crashable_server.crash)
        await asyncio.to_thread(crashable_server.start)
        seen["after"] = await count_rows(url)

    sink = fast(settings, POSITION, after_db_commit=crash_after_some_batches)
    async with running(sink):
        await until(
            lambda: _has(url, len(fixes)),
            timeout=60,
            what="every row after the crash",
        )
        await until(
            lambda: _committed_all(settings, len(fixes)),
            timeout=30,
            what="every offset committed",
        )

    assert await history(settings) == sorted(as_row(r) for r in fixes)
    assert seen["before"] == CRASH_AFTER_BATCH * BATCH
    # Offsets never ran ahead of the rows the crash kept.
    assert seen["committed"] <= seen["after"]
    if async_commit:
        # The crash really took acknowledged batches; the sink read them again.
        assert seen["after"] < seen["before"]
        assert sink.stats.rewinds == 1
    else:
        assert seen["after"] == seen["before"]
        assert sink.stats.rewinds == 0


async def _has(url: str, expected: int) -> bool:
    try:
        return await count_rows(url) == expected
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


async def _committed_all(settings, expected: int) -> bool:
    return sum((await committed(settings, POSITION.group_id(settings))).values()) == (
        expected
    )


async def test_a_sink_cancelled_mid_write_ends_while_batches_await_their_flush(
    make_settings, crashable_server
):
    """Cancelling is not a lost connection: the sink must end, not rewind."""
    from migrations.runner import migrate

    admin = await asyncpg.connect(crashable_server.url)
    await admin.execute('CREATE DATABASE "cancelme"')
    await admin.close()
    url = with_database(crashable_server.url, "cancelme")
    await migrate(url)
    settings = make_settings(database_url=url, sink_batch_max_records=BATCH)
    per_device = BATCH * BATCHES // len(IMEIS)
    await produce(
        settings,
        "position",
        [position(imei, m) for imei in IMEIS for m in range(per_device)],
    )

    locked = asyncio.Event()
    blocker: list[asyncpg.Connection] = []

    async def block_the_next_write() -> None:
        if locked.is_set() or not sink._unflushed:
            return
        conn = await asyncpg.connect(url)
        blocker.append(conn)
        await conn.execute("BEGIN")
        await conn.execute(
            "LOCK TABLE tracksolid.position_history IN ACCESS EXCLUSIVE MODE"
        )
        locked.set()

    sink = fast(settings, POSITION, after_db_commit=block_the_next_write)
    task = asyncio.create_task(sink.run(asyncio.Event()))
    try:
        await asyncio.wait_for(locked.wait(), 60)
        await asyncio.sleep(0.5)  # the next batch's COPY now waits for the lock
        assert sink._unflushed, "no batch awaited its flush when cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert sink.stats.rewinds == 0
    finally:
        if not task.done():
            task.cancel()
        for conn in blocker:
            await conn.close()


async def test_a_sink_told_to_stop_while_the_broker_is_down_exits(
    make_settings, database_url, tmp_path
):
    """Offsets it cannot commit are left to be rewritten; it does not hang."""
    broker = EmbeddedBroker(free_port(), tmp_path / "tansu.log").start()
    stop = asyncio.Event()
    stopped_at: list[float] = []

    async def broker_gone_then_stop() -> None:
        if not stopped_at:
            await asyncio.to_thread(broker.stop)
            stop.set()
            stopped_at.append(time.monotonic())

    try:
        settings = make_settings(
            database_url=database_url,
            kafka_bootstrap_servers=broker.bootstrap_servers,
            broker_profile="embedded",
            kafka_request_timeout_ms=3000,
        )
        fixes = [position(imei, m) for imei in IMEIS for m in range(10)]
        await produce(settings, "position", fixes)
        sink = fast(settings, POSITION, after_db_commit=broker_gone_then_stop)
        await asyncio.wait_for(sink.run(stop), 120)
        took = time.monotonic() - stopped_at[0]
        assert took < STOP_BOUND_SECONDS, f"took {took:.1f} s to stop"
    finally:
        broker.stop()
    # Whatever the sink wrote is in the database; its offsets were not committed.
    assert set(await history(settings)) <= {as_row(r) for r in fixes}
    assert await history(settings)

"""Running a stage until SIGTERM or SIGINT, then shutting it down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


def run_until_stopped(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a new event loop; SIGTERM/SIGINT set ``stop``.

    ``main`` must return soon after ``stop`` is set, having flushed and
    committed what it owns.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; return True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))
    except TimeoutError:
        return False
    return True


async def serve_http(server, stop: asyncio.Event) -> None:
    """Run a ``uvicorn.Server`` until it exits or ``stop`` is set.

    uvicorn catches SIGTERM/SIGINT while it serves and raises them again once
    done; under ``run_until_stopped`` that lands on the stop handler, so the
    process ends with status 0 after a clean shutdown.
    """
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving

"""The ``fleetstream sink`` stage: one consumer group per declared sink."""

from __future__ import annotations

import asyncio
import logging

from fleetstream.errors import ConfigError
from fleetstream.runtime import run_until_stopped
from fleetstream.settings import Settings
from sinks import metrics
from sinks.kinds import SINKS, SinkSpec
from sinks.sink import Sink

logger = logging.getLogger(__name__)


async def run_sinks(
    settings: Settings, stop: asyncio.Event, sinks: tuple[SinkSpec, ...] = SINKS
) -> list[Sink]:
    """Run every sink until ``stop`` is set; a sink that fails stops the others.

    A permanent configuration error is raised as the one ``ConfigError`` it is,
    however many sinks met it, so the command exits with one line. With
    ``sink_metrics_port`` set, the sinks' counters are served over HTTP
    meanwhile (``sinks.metrics``); a port that cannot be bound is such an
    error, raised before any sink starts.
    """
    running = [Sink(settings, sink) for sink in sinks]
    async with metrics.serving(settings, running):
        logger.info(
            "starting %d sinks: %s", len(running), [s.spec.kind for s in running]
        )
        try:
            async with asyncio.TaskGroup() as group:
                for sink in running:
                    group.create_task(sink.run(stop), name=f"sink-{sink.spec.kind}")
        except* ConfigError as errors:
            raise errors.exceptions[0] from None
    return running


def main(settings: Settings) -> None:
    """Write every clean topic into PostgreSQL until SIGTERM or SIGINT."""

    async def sink_stage(stop: asyncio.Event) -> None:
        await run_sinks(settings, stop)

    run_until_stopped(sink_stage)

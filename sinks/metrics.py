"""Serve the sinks' counters as Prometheus text at ``/metrics``.

Off unless ``FLEETSTREAM_SINK_METRICS_PORT`` is set; it listens on
``FLEETSTREAM_SINK_METRICS_HOST`` (127.0.0.1 by default, so only the host
itself can scrape). Every series carries a ``sink`` label, the sink's kind.
Counters count since the process started, as Prometheus counters do.

The server shares the sink stage's lifetime: its port is bound before any sink
starts, so a port in use stops the command with one line, and it is closed once
every sink has returned. On SIGTERM uvicorn, which watches the signal too,
stops serving at once while the sinks finish their last batch: a scrape in
those seconds is refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from fleetstream.errors import ConfigError
from fleetstream.settings import Settings
from sinks.sink import Sink

logger = logging.getLogger(__name__)

# A scrape still open at stop gets this long to finish.
STOP_GRACE_SECONDS = 2
PORT_HINT = (
    "set FLEETSTREAM_SINK_METRICS_PORT to a free port, or to 0 to serve no metrics"
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _family(
    name: str, kind: str, samples: Iterator[tuple[str, dict[str, str], float]]
) -> list[str]:
    """Return one metric family: its TYPE line, then one line per sample."""
    lines = [f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{suffix}{{{text}}} {_number(value)}")
    return lines


def render(sinks: Sequence[Sink]) -> str:
    """Return every sink's counters in the Prometheus text format."""
    ordered = sorted(sinks, key=lambda s: s.spec.kind)

    def each(value) -> Iterator[tuple[str, dict[str, str], float]]:
        for sink in ordered:
            yield "", {"sink": sink.spec.kind}, value(sink.stats)

    def rows() -> Iterator[tuple[str, dict[str, str], float]]:
        for sink in ordered:
            # Every table from the start, so that a rate over a quiet sink is 0.
            tables = dict.fromkeys((t.table for t in sink.spec.targets), 0)
            tables.update(sink.stats.rows_by_table)
            for table, count in sorted(tables.items()):
                yield "", {"sink": sink.spec.kind, "table": table}, count

    def latency() -> Iterator[tuple[str, dict[str, str], float]]:
        for sink in ordered:
            labels = {"sink": sink.spec.kind}
            yield "_sum", labels, sink.stats.batch_seconds_total
            yield "_count", labels, sink.stats.batches

    def last_commit() -> Iterator[tuple[str, dict[str, str], float]]:
        # No sample for a sink that has not committed a batch yet.
        for sink in ordered:
            if sink.stats.last_commit_time is not None:
                yield "", {"sink": sink.spec.kind}, sink.stats.last_commit_time

    prefix = "fleetstream_sink_"
    lines = [
        *_family(prefix + "records_total", "counter", each(lambda s: s.records)),
        *_family(prefix + "rows_written_total", "counter", rows()),
        *_family(prefix + "batch_seconds", "summary", latency()),
        *_family(
            prefix + "batch_seconds_max", "gauge", each(lambda s: s.batch_seconds_max)
        ),
        *_family(prefix + "retries_total", "counter", each(lambda s: s.retries)),
        *_family(
            prefix + "dead_letters_total", "counter", each(lambda s: s.dead_letters)
        ),
        *_family(prefix + "rewinds_total", "counter", each(lambda s: s.rewinds)),
        *_family(
            prefix + "assignments_total", "counter", each(lambda s: s.assignments)
        ),
        *_family(prefix + "assigned_partitions", "gauge", each(lambda s: s.partitions)),
        *_family(prefix + "last_commit_timestamp_seconds", "gauge", last_commit()),
    ]
    return "\n".join(lines) + "\n"


def create_app(sinks: Sequence[Sink]) -> FastAPI:
    """Return an app that serves ``GET /metrics`` and nothing else."""
    app = FastAPI(
        title="fleetstream sink metrics",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(render(sinks))

    return app


def bind(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to ``host``:``port``, or raise ``ConfigError``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise ConfigError(
            f"sink metrics: FLEETSTREAM_SINK_METRICS_HOST {host!r} is not an "
            f"address of this host: {exc.strerror or exc}",
            hint="use an IP address of this host, e.g. 127.0.0.1 or 0.0.0.0",
        ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted sink take its port back at once; a port another
        # process listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"sink metrics: cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint=PORT_HINT,
        ) from exc
    return sock


@asynccontextmanager
async def serving(settings: Settings, sinks: Sequence[Sink]) -> AsyncIterator[None]:
    """Serve the sinks' metrics while the block runs, when a port is set.

    Raises ``ConfigError`` before the block when the port cannot be bound.
    """
    port = settings.sink_metrics_port
    if not port:
        yield
        return
    sock = bind(settings.sink_metrics_host, port)
    config = uvicorn.Config(
        create_app(sinks),
        log_config=None,
        lifespan="off",
        # Scrapes every few seconds would bury the sinks' own lines.
        access_log=False,
        timeout_graceful_shutdown=STOP_GRACE_SECONDS,
    )
    server = uvicorn.Server(config)
    host, bound_port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    task = asyncio.create_task(server.serve(sockets=[sock]), name="sink-metrics")
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        logger.info("sink metrics at http://%s:%d/metrics", host, bound_port)
        yield
    finally:
        server.should_exit = True
        try:
            await task
        except Exception:
            # The sinks' own outcome decides how the stage ends, not this.
            logger.exception("sink metrics server failed")
        finally:
            # uvicorn closes it once serving; not if it was stopped before.
            sock.close()
        logger.info("sink metrics stopped")

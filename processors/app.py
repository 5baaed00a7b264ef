"""The faust application of the processing stage.

``create_app(settings)`` builds the app. Its ``RawCleaner`` service
(``processors.batch``) reads every raw topic in batches, hands each record to
``processors.routing.Router`` and sends what it returns: a clean record keyed by
IMEI, a dead letter keyed like the original, or nothing for a repeated fix. The
raw topics are read by that service rather than by a faust agent because
faust's per-event stream path is slower than a backfill needs (measured in
``bench/bench_processor.py``). The app's own agent counts the dead letters of
every stage. Other processor modules add their agents to the same app: each
module named in ``AGENT_MODULES`` that exists exposes ``register(app, settings)``.

Delivery is at-least-once (see ``processors.batch``): offsets are committed
only for records whose output the broker has acknowledged.

Values travel as raw bytes and are decoded inside the router
(``processors.envelope``, which leaves anything unusual to ``fleetstream.codec``),
so an undecodable record is dead-lettered like any other unusable record
instead of crashing the worker.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from fleetstream.codec import codec
from fleetstream.errors import ContractError, FleetstreamError
from fleetstream.kafka import ensure_topics
from fleetstream.runtime import run_until_stopped, sleep_or_stop
from fleetstream.settings import Settings, get_settings
from fleetstream.topics import DEADLETTER_TOPIC
from processors.batch import RawCleaner
from processors.collector import collector
from processors.routing import Router

logger = logging.getLogger(__name__)

AGENT_MODULES = ("processors.derived",)

# faust builds its consumer with fetch_max_wait_ms=1500 whatever the settings
# say. The embedded broker never wakes a waiting fetch when records arrive, so
# that value would add up to 1.5 s of latency to every hop.
EMBEDDED_FETCH_MAX_WAIT_MS = 20
APP_CHECK_INTERVAL_SECONDS = 0.5


class ProcessorCrashed(FleetstreamError):
    """A service or agent of the processing app failed; offsets are safe."""


class _ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = EMBEDDED_FETCH_MAX_WAIT_MS
        return consumer


class _ShortFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self):
        return _ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ShortFetchTransport(faust_aiokafka.Transport):
    Consumer = _ShortFetchConsumer


class EmbeddedBrokerApp(faust.App):
    """A faust app whose consumer waits briefly on each fetch (embedded broker)."""

    def _new_transport(self):
        return _ShortFetchTransport(self.conf.broker_consumer, self)


def faust_options(settings: Settings) -> dict:
    """Return faust settings derived from ours."""
    tuning = settings.kafka_tuning()
    return {
        "broker": [
            f"kafka://{server.strip()}"
            for server in settings.kafka_bootstrap_servers.split(",")
        ],
        "broker_session_timeout": tuning["session_timeout_ms"] / 1000,
        "broker_heartbeat_interval": tuning["heartbeat_interval_ms"] / 1000,
        "broker_rebalance_timeout": tuning["rebalance_timeout_ms"] / 1000,
        # faust refuses a request timeout shorter than the session timeout.
        "broker_request_timeout": max(
            settings.kafka_request_timeout_ms, tuning["session_timeout_ms"]
        )
        / 1000,
        "broker_max_poll_records": settings.process_batch_max_records,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "producer_acks": -1,
        "producer_linger": settings.kafka_producer_linger_ms / 1000,
        "producer_max_batch_size": settings.kafka_producer_max_batch_bytes,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "web_enabled": False,
        "datadir": str(settings.state_dir / f"faust-{settings.topic_prefix}"),
    }


def create_app(settings: Settings) -> faust.App:
    """Return a faust app with the raw cleaner and every registered agent."""
    return build(settings)[0]


def default_agent_modules(settings: Settings) -> tuple[str, ...]:
    """The agent modules the stage runs: the derived worker unless it runs alone."""
    if settings.process_derive:
        return AGENT_MODULES
    return tuple(m for m in AGENT_MODULES if m != "processors.derived")


def build(
    settings: Settings, agent_modules: tuple[str, ...] | None = None
) -> tuple[faust.App, Router]:
    """Return the app and the router of its raw cleaner."""
    if agent_modules is None:
        agent_modules = default_agent_modules(settings)
    embedded = settings.broker_profile == "embedded"
    app_class = EmbeddedBrokerApp if embedded else faust.App
    app = app_class(f"{settings.topic_prefix}-process", **faust_options(settings))
    router = register(app, settings)
    for name in agent_modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app, settings)
    return app, router


def register(app: faust.App, settings: Settings) -> Router:
    """Add the raw-topic cleaner to ``app``; return its router (counts, memory)."""
    router = Router(settings)

    @app.service
    class CleanRawTopics(RawCleaner):
        def __init__(self, **kwargs) -> None:
            super().__init__(settings, router, **kwargs)

    dead_letters = app.topic(
        DEADLETTER_TOPIC.name(settings), key_type=bytes, value_type=bytes
    )
    dead_letter_codec = codec(DEADLETTER_TOPIC.schema)

    @app.agent(dead_letters, name="count_dead_letters")
    async def count_dead_letters(stream):
        # Every stage's dead letters, counted by stage: the dead-letter metric.
        async for value in stream:
            try:
                stage = dead_letter_codec.decode(value)["stage"]
            except ContractError:
                stage = "unreadable"
            router.dead_letters_seen[stage] += 1

    return router


async def run(
    settings: Settings,
    stop: asyncio.Event,
    on_ready: Callable[[faust.App, Router], None] | None = None,
    agent_modules: tuple[str, ...] | None = None,
) -> None:
    """Run the processing app until ``stop`` is set or the app stops itself.

    Raises ``ProcessorCrashed`` when a service or agent failed, so the process
    exits with an error and its supervisor restarts it.
    """
    await ensure_topics(settings)
    app, router = build(settings, agent_modules)
    with collector.running():
        await app.start()
        logger.info("processor started for %s", settings.topic_prefix)
        if on_ready is not None:
            on_ready(app, router)
        try:
            # A crashed service marks the app as stopping; look twice a second.
            while not app.should_stop:
                if await sleep_or_stop(stop, APP_CHECK_INTERVAL_SECONDS):
                    break
        finally:
            await app.stop()
            counts = router.counts
            logger.info(
                "processor stopped: %d clean, %d dead letters, %d repeats dropped",
                sum(
                    v for k, v in counts.items() if k not in ("deadletter", "duplicate")
                ),
                counts["deadletter"],
                counts["duplicate"],
            )
    if app.crash_reason is not None:
        raise ProcessorCrashed("the processing app crashed") from app.crash_reason


def main(settings: Settings) -> None:
    """Run the processing stage until SIGTERM or SIGINT."""
    run_until_stopped(lambda stop: run(settings, stop))


def __getattr__(name: str):
    # ``app`` is built on first use so that importing this module reads no
    # environment; ``faust -A processors.app worker`` still finds it.
    if name == "app":
        value = create_app(get_settings())
        globals()["app"] = value
        return value
    raise AttributeError(name)

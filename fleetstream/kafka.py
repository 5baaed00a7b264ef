"""Kafka clients configured from settings, and topic creation.

Production brokers get Kafka's safe defaults: ``acks=all`` and the idempotent
producer. The embedded broker (tansu) rejects aiokafka's InitProducerId request,
so with ``broker_profile=embedded`` the producer runs with ``acks=all`` only;
ordering per partition is still kept by allowing one request in flight.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from fleetstream.settings import Settings
from fleetstream.topics import ALL_TOPICS, TopicSpec

logger = logging.getLogger(__name__)


def make_producer(settings: Settings, **overrides) -> AIOKafkaProducer:
    """Return an unstarted producer that waits for all in-sync replicas."""
    options = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "linger_ms": settings.kafka_producer_linger_ms,
        "max_batch_size": settings.kafka_producer_max_batch_bytes,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "enable_idempotence": settings.broker_profile == "kafka",
    }
    if settings.broker_profile == "embedded":
        options["max_request_size"] = 4 * 1_048_576
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides
) -> AIOKafkaConsumer:
    """Return an unstarted consumer that commits only when told to.

    New groups start from the earliest offset: raw and clean topics are the
    replay log, and "latest" is unreliable on the embedded broker.
    """
    options = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.sink_batch_max_records,
        **settings.kafka_tuning(),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def ensure_topics(
    settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS
) -> list[str]:
    """Create every declared topic that does not exist yet; return their names."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=spec.name(settings),
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                topic_configs=spec.topic_configs(),
            )
            for spec in specs
            if spec.name(settings) not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                logger.info("topics created concurrently by another process")
            logger.info("created %d topics", len(wanted))
        return [spec.name(settings) for spec in specs]
    finally:
        await admin.close()

"""Publishing Open API records as RawEvents, shared by the poll worker and backfill."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from fleetstream.codec import codec
from fleetstream.kafka import make_producer
from fleetstream.runtime import sleep_or_stop
from fleetstream.settings import Settings
from fleetstream.topics import RAW, raw_kind

logger = logging.getLogger(__name__)

# Failed publishes in a row after which a replaceable producer is replaced.
RESTART_AFTER_FAILURES = 3


async def started_producer(
    settings: Settings, stop: asyncio.Event
) -> AIOKafkaProducer | None:
    """Return a started producer, waiting for the broker; None if stopped first.

    A worker started before its broker waits for it (doubling pauses up to
    30 s) rather than exiting.
    """
    pause = 1.0
    while not stop.is_set():
        producer = make_producer(settings)
        try:
            await producer.start()
            return producer
        except (KafkaError, OSError) as exc:
            await producer.stop()
            logger.warning("broker unreachable, retrying in %.0f s: %s", pause, exc)
        if await sleep_or_stop(stop, pause):
            break
        pause = min(pause * 2, 30.0)
    return None


def record_imei(record: Any) -> str | None:
    """Return the IMEI a platform record names, if any."""
    if not isinstance(record, Mapping):
        return None
    value = record.get("imei") or record.get("deviceImei")
    return str(value) if value and has_utf8(str(value)) else None


def has_utf8(text: str) -> bool:
    """Return whether ``text`` can be written as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def payload_text(record: Any) -> str:
    """Return ``record`` as JSON text that UTF-8, and so Avro, can carry.

    Non-ASCII characters stay as they are, unless the record holds a lone
    surrogate (``"\\ud800"`` in the JSON it came as), which has no UTF-8 form;
    then every character is escaped, a text that reads back to the same value.
    NaN and infinities, which a lenient parser let in but JSON has no words
    for, are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return payload_text(_non_finite_as_text(record))
    return text if has_utf8(text) else json.dumps(record)


def _non_finite_as_text(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return {k: _non_finite_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_non_finite_as_text(v) for v in value]
    return value


class RawPublisher:
    """Send records to their raw topic, one RawEvent each, keyed by IMEI.

    Every publish waits at most twice the Kafka request timeout for its
    acknowledgements, so a producer that stopped sending fails the call instead
    of hanging it. With ``replaceable``, a producer that fails
    ``RESTART_AFTER_FAILURES`` publishes in a row is stopped and a new one
    started; ``producer`` is then the new one, which the owner must stop.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        source: str,
        *,
        replaceable: bool = False,
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.source = source
        self.replaceable = replaceable
        self.failures = 0
        self.restarts = 0
        self.ack_timeout_s = 2 * settings.kafka_request_timeout_ms / 1000
        self._codec = codec("RawEvent")

    async def publish(
        self,
        origin: str,
        records: Iterable[Any],
        *,
        request_id: str,
        imei: str | None = None,
    ) -> int:
        """Publish ``records`` of one response and wait until Kafka acknowledged all.

        ``imei`` names the device for records that do not carry it (track
        points). Elements that are not JSON objects are published as they
        came, for the processor to dead-letter. Returns the number of records
        acknowledged; raises if any send failed or the acknowledgements did not
        come in time, so the caller never advances a watermark past lost
        records.
        """
        topic = self.settings.topic(RAW, raw_kind(origin))
        messages = self._encode(origin, records, request_id, imei)
        producer = self.producer
        try:
            async with asyncio.timeout(self.ack_timeout_s):
                pending = [
                    await producer.send(topic, value=value, key=key)
                    for key, value in messages
                ]
                await asyncio.gather(*pending)
        except (TimeoutError, KafkaError):
            await self._failed(producer)
            raise
        self.failures = 0
        logger.debug("published %d %s records to %s", len(messages), origin, topic)
        return len(messages)

    def _encode(
        self,
        origin: str,
        records: Iterable[Any],
        request_id: str,
        imei: str | None,
    ) -> list[tuple[bytes | None, bytes]]:
        received_at = datetime.now(UTC)
        messages = []
        for record in records:
            device = record_imei(record) or imei
            value = self._codec.encode(
                {
                    "source": self.source,
                    "origin": origin,
                    "received_at": received_at,
                    "imei": device,
                    "payload": payload_text(record),
                    "request_id": request_id,
                }
            )
            messages.append((device.encode() if device else None, value))
        return messages

    async def _failed(self, producer: AIOKafkaProducer) -> None:
        if producer is not self.producer:
            return
        self.failures += 1
        if not self.replaceable or self.failures < RESTART_AFTER_FAILURES:
            return
        fresh = make_producer(self.settings)
        try:
            await fresh.start()
        except (KafkaError, OSError) as exc:
            await fresh.stop()
            logger.warning("producer not replaced, broker unreachable: %s", exc)
            return
        self.producer, self.failures = fresh, 0
        self.restarts += 1
        logger.warning(
            "producer failed %d publishes in a row; replaced it",
            RESTART_AFTER_FAILURES,
        )
        try:
            await asyncio.wait_for(producer.stop(), self.ack_timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            logger.warning("replaced producer did not stop cleanly: %s", exc)

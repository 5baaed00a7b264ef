"""Publishing Open API records as RawEvents, shared by the poll worker and backfill."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from fleetstream.codec import codec
from fleetstream.settings import Settings
from fleetstream.topics import RAW, raw_kind

logger = logging.getLogger(__name__)


def record_imei(record: Mapping[str, Any]) -> str | None:
    """Return the IMEI a platform record names, if any."""
    value = record.get("imei") or record.get("deviceImei")
    return str(value) if value else None


class RawPublisher:
    """Send records to their raw topic, one RawEvent each, keyed by IMEI."""

    def __init__(
        self, producer: AIOKafkaProducer, settings: Settings, source: str
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.source = source
        self._codec = codec("RawEvent")

    async def publish(
        self,
        origin: str,
        records: Iterable[Mapping[str, Any]],
        *,
        request_id: str,
        imei: str | None = None,
    ) -> int:
        """Publish ``records`` of one response and wait until Kafka acknowledged all.

        ``imei`` names the device for records that do not carry it (track
        points). Returns the number of records acknowledged; raises if any send
        failed, so the caller never advances a watermark past lost records.
        """
        topic = self.settings.topic(RAW, raw_kind(origin))
        received_at = datetime.now(UTC)
        pending = []
        for record in records:
            device = record_imei(record) or imei
            value = self._codec.encode(
                {
                    "source": self.source,
                    "origin": origin,
                    "received_at": received_at,
                    "imei": device,
                    "payload": json.dumps(record, ensure_ascii=False),
                    "request_id": request_id,
                }
            )
            key = device.encode() if device else None
            pending.append(await self.producer.send(topic, value=value, key=key))
        if pending:
            await asyncio.gather(*pending)
        logger.debug("published %d %s records to %s", len(pending), origin, topic)
        return len(pending)

"""Receive Tracksolid pushes and publish each record to its raw topic.

Two body shapes arrive. Data pushes go to ``/push<endpoint>`` with ``token`` and
``data_list`` (a JSON array encoded as a string; ``data`` is accepted too).
Open API messages go to the base path ``/`` with ``msgType`` and ``data`` (a
JSON object encoded as a string). Both come form-encoded from the platform;
JSON bodies with the same fields are accepted as well.

Delivery: the reply ``{"code":0,"msg":"success"}`` is sent only after Kafka
has acknowledged every record of the body. If the broker does not acknowledge
them all in time the reply is 503, so the platform may resend; records that
did reach Kafka before the timeout are then stored twice, which the
processors' de-duplication absorbs.

What is refused: a body that cannot be read as a whole (not UTF-8, not form or
JSON, ``data_list`` not a JSON array, no records, wrong token, too large) gets
a 4xx and nothing of it is published. A readable body is published whole, one
RawEvent per element, so a bad record never costs the good records beside it:
an element that is not a JSON object, or names no IMEI, is published as it came
(its JSON text, ``imei`` null, no key) for the processor to dead-letter with a
reason, and is counted in ``fleetstream_webhook_suspect_records_total``.

``/healthz`` answers 200 only while the broker answers a metadata request
(checked at most every ``HEALTH_CACHE_S``). A producer that fails
``RESTART_AFTER_FAILURES`` pushes in a row is stopped and a new one started, so
a wedged client heals without restarting the process.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from fleetstream.codec import codec
from fleetstream.errors import FleetstreamError
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.runtime import run_until_stopped, serve_http
from fleetstream.settings import Settings
from fleetstream.topics import RAW_KIND_BY_ORIGIN, RAW_TOPICS, raw_kind
from producers.publish import has_utf8, payload_text

logger = logging.getLogger(__name__)

SUCCESS = {"code": 0, "msg": "success"}
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"
NOT_OBJECT = "record_not_object"
NO_IMEI = "missing_imei"
# A probe answer this fresh is reused: load balancers may probe many times a second.
HEALTH_CACHE_S = 1.5
HEALTH_TIMEOUT_S = 2.0
RESTART_AFTER_FAILURES = 3


class Refused(FleetstreamError):
    """A push that is answered with an error status and never published."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Push:
    """One readable body: where it came from and its elements, in order.

    Elements are normally JSON objects; anything else is kept for the
    dead-letter topic rather than dropped.
    """

    origin: str
    token: str | None
    records: list[Any]


def token_matches(given: str | None, expected: str) -> bool:
    """Return whether ``given`` equals ``expected``, in time independent of both."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def record_imei(record: Any) -> str | None:
    """Return the device IMEI a push record names, if any."""
    if not isinstance(record, dict):
        return None
    msg = record.get("msg")
    candidates = (
        record.get("deviceImei"),
        record.get("imei"),
        msg.get("deviceImei") if isinstance(msg, dict) else None,
    )
    for value in candidates:
        if isinstance(value, int | str) and not isinstance(value, bool):
            text = str(value).strip()
            if text and has_utf8(text):
                return text
    return None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text:.20} is beyond a double")
    return value


def _parse_json(text: str, field: str) -> Any:
    try:
        # NaN and Infinity are not JSON, and a number beyond a double would be
        # written back as Infinity; letting them through would publish
        # payloads no other JSON reader accepts.
        return json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except ValueError as exc:
        raise Refused(
            400, "malformed_json", f"{field} is not valid JSON: {exc}"
        ) from None
    except RecursionError:
        # Thousands of nested brackets exhaust the parser's stack.
        raise Refused(
            400, "malformed_json", f"{field} is nested too deeply to read"
        ) from None


def suspect_reason(record: Any, imei: str | None) -> str | None:
    """Return why the processor will dead-letter ``record``, None if it may not."""
    if not isinstance(record, dict):
        return NOT_OBJECT
    if imei is None:
        return NO_IMEI
    return None


def _as_records(value: Any, field: str) -> list[Any]:
    if isinstance(value, str):
        value = _parse_json(value, field)
    if isinstance(value, dict) and field == "data":
        value = [value]
    if not isinstance(value, list):
        raise Refused(
            400,
            "not_an_array",
            f"{field} must be a JSON array, got {type(value).__name__}",
        )
    if not value:
        raise Refused(400, "empty_data_list", f"{field} holds no records")
    return value


def _fields(body: bytes, content_type: str) -> dict[str, Any]:
    """Return the top-level fields of a form or JSON body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "not_utf8", "body is not UTF-8") from None
    if content_type == JSON_TYPE:
        fields = _parse_json(text, "body")
        if not isinstance(fields, dict):
            raise Refused(400, "not_an_object", "a JSON body must be an object")
        return fields
    if content_type in (FORM_TYPE, ""):
        try:
            pairs = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
        except ValueError:
            raise Refused(400, "malformed_form", "body is not form-encoded") from None
        return {name: values[-1] for name, values in pairs.items()}
    raise Refused(
        415, "unsupported_media_type", f"content type {content_type!r} is not accepted"
    )


def parse_push(path: str, body: bytes, content_type: str) -> Push:
    """Return the records of a push body, or raise Refused saying what is wrong."""
    fields = _fields(body, content_type)
    token = fields.get("token")
    token = token if isinstance(token, str) else None
    msg_type = fields.get("msgType")
    is_message = isinstance(msg_type, str) and msg_type.startswith("jimi.")
    if path and not is_message:
        for field in ("data_list", "data"):
            if field in fields:
                return Push(path, token, _as_records(fields[field], field))
        raise Refused(400, "missing_data_list", "body has no data_list")
    if not isinstance(msg_type, str) or not msg_type:
        raise Refused(400, "missing_msg_type", "a message needs msgType and data")
    if "data" not in fields:
        raise Refused(400, "missing_data", f"message {msg_type} has no data")
    return Push(msg_type, token, _as_records(fields["data"], "data"))


def metric_origin(origin: str) -> str:
    """Return the metrics label of an origin: known ones as is, else ``other``.

    Paths and message types come from the request, before the token is
    checked; labelling them verbatim would let anyone add series without end
    or break the exposition format with quotes.
    """
    return origin if origin in RAW_KIND_BY_ORIGIN or origin == "message" else "other"


class Metrics:
    """Counters of what the receiver did, served as Prometheus text."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.records: Counter[str] = Counter()
        self.suspects: Counter[tuple[str, str]] = Counter()
        self.producer_restarts = 0
        self.broker_up: bool | None = None

    def count(self, origin: str, outcome: str, records: int = 0) -> None:
        label = metric_origin(origin)
        self.requests[(label, outcome)] += 1
        if records:
            self.records[label] += records

    def suspect(self, origin: str, reason: str, records: int) -> None:
        self.suspects[(metric_origin(origin), reason)] += records

    def render(self) -> str:
        lines = [
            "# TYPE fleetstream_webhook_requests_total counter",
            *(
                f'fleetstream_webhook_requests_total{{origin="{o}",outcome="{r}"}} {n}'
                for (o, r), n in sorted(self.requests.items())
            ),
            "# TYPE fleetstream_webhook_records_total counter",
            *(
                f'fleetstream_webhook_records_total{{origin="{o}"}} {n}'
                for o, n in sorted(self.records.items())
            ),
            "# TYPE fleetstream_webhook_suspect_records_total counter",
            *(
                "fleetstream_webhook_suspect_records_total"
                f'{{origin="{o}",reason="{r}"}} {n}'
                for (o, r), n in sorted(self.suspects.items())
            ),
            "# TYPE fleetstream_webhook_producer_restarts_total counter",
            f"fleetstream_webhook_producer_restarts_total {self.producer_restarts}",
        ]
        if self.broker_up is not None:
            lines += [
                "# TYPE fleetstream_webhook_broker_up gauge",
                f"fleetstream_webhook_broker_up {int(self.broker_up)}",
            ]
        return "\n".join(lines) + "\n"


class ProducerHolder:
    """The Kafka producer: started on first need, replaced when it keeps failing.

    A producer handed in by the caller is used as is: never replaced, never
    stopped.
    """

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer | None,
        metrics: Metrics,
        restart_after: int = RESTART_AFTER_FAILURES,
    ) -> None:
        self.settings = settings
        self.owned = producer is None
        self.producer = producer
        self.started = producer is not None
        self.metrics = metrics
        self.restart_after = restart_after
        self.failures = 0
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._checked_at = float("-inf")
        self._reachable = False
        self._probe_lock = asyncio.Lock()

    async def get(self) -> AIOKafkaProducer:
        if self.started:
            return self.producer
        async with self._lock:
            if not self.started:
                producer = make_producer(self.settings)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self.producer, self.started = producer, True
                logger.info("producer started")
        return self.producer

    def succeeded(self) -> None:
        """Note a push the broker acknowledged: it proves the broker reachable."""
        self.failures = 0
        self._reachable, self._checked_at = True, time.monotonic()
        self.metrics.broker_up = True

    def failed(self, producer: AIOKafkaProducer) -> None:
        """Count a push ``producer`` could not deliver; replace it when due."""
        # The next probe asks the broker again rather than trust an old answer.
        self._checked_at = float("-inf")
        if not self.owned or producer is not self.producer or not self.started:
            return
        self.failures += 1
        if self.failures < self.restart_after:
            return
        # Pushes still waiting on the old producer keep it until they end; the
        # next push starts a fresh one with new connections and metadata.
        self.producer, self.started, self.failures = None, False, 0
        self.metrics.producer_restarts += 1
        task = asyncio.create_task(self._retire(producer))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        logger.warning(
            "producer failed %d pushes in a row; replacing it", self.restart_after
        )

    async def _retire(self, producer: AIOKafkaProducer) -> None:
        timeout = self.settings.kafka_request_timeout_ms / 1000
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            logger.warning("replaced producer did not stop cleanly: %s", exc)

    async def reachable(self) -> bool:
        """Return whether the broker answers a metadata request now (cached)."""
        async with self._probe_lock:
            if time.monotonic() - self._checked_at < HEALTH_CACHE_S:
                return self._reachable
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT_S):
                    producer = await self.get()
                    await producer.client.fetch_all_metadata()
                self._reachable = True
            except (TimeoutError, KafkaError, OSError) as exc:
                logger.debug("broker probe failed: %s", type(exc).__name__)
                self._reachable = False
            self._checked_at = time.monotonic()
            self.metrics.broker_up = self._reachable
            return self._reachable

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.owned and self.started:
            await self.producer.stop()
            self.started = False


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    # isdigit() alone accepts non-ASCII digits such as "\u00b2", which int() refuses.
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise Refused(
            413, "body_too_large", f"body of {declared} bytes exceeds {limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            # A chunked body without a length is cut off here, unread beyond.
            raise Refused(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings, producer: AIOKafkaProducer | None = None) -> FastAPI:
    """Return the receiver app; a given producer is used as is and never stopped."""
    metrics = Metrics()
    holder = ProducerHolder(settings, producer, metrics)
    expected_token = settings.webhook_push_token.get_secret_value()
    ack_timeout_s = settings.kafka_request_timeout_ms / 1000
    raw_event = codec("RawEvent")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await holder.get()
        except (KafkaError, OSError) as exc:
            logger.warning("broker unreachable at start, pushes get 503: %s", exc)
        yield
        await holder.close()

    app = FastAPI(title="fleetstream webhook", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.producers = holder

    async def publish(
        kafka: AIOKafkaProducer, push: Push, received_at: datetime
    ) -> Counter[str]:
        """Send every element and wait for all acks; return the suspects' reasons."""
        topic = settings.topic("raw", raw_kind(push.origin))
        request_id = uuid.uuid4().hex
        suspects: Counter[str] = Counter()
        futures = []
        for record in push.records:
            imei = record_imei(record)
            if (reason := suspect_reason(record, imei)) is not None:
                suspects[reason] += 1
            value = raw_event.encode(
                {
                    "source": "push",
                    "origin": push.origin,
                    "received_at": received_at,
                    "imei": imei,
                    "payload": payload_text(record),
                    "request_id": request_id,
                }
            )
            key = imei.encode() if imei is not None else None
            futures.append(await kafka.send(topic, value, key=key))
        await asyncio.gather(*futures)
        return suspects

    async def receive(request: Request, path: str) -> JSONResponse:
        origin = path or "message"
        kafka = None
        try:
            body = await _read_body(request, settings.webhook_max_body_bytes)
            content_type = request.headers.get("content-type", "").split(";")[0]
            push = parse_push(path, body, content_type.strip().lower())
            token = request.query_params.get("token") or push.token
            if token is None:
                raise Refused(401, "missing_token", "token missing")
            if not token_matches(token, expected_token):
                raise Refused(403, "wrong_token", "token does not match")
            origin = push.origin
            async with asyncio.timeout(ack_timeout_s):
                kafka = await holder.get()
                suspects = await publish(kafka, push, datetime.now(UTC))
            holder.succeeded()
        except Refused as exc:
            metrics.count(origin, exc.reason)
            logger.info("refused push to /%.60s: %s", path, exc.reason)
            return JSONResponse(
                {"code": exc.status, "msg": exc.message, "reason": exc.reason},
                status_code=exc.status,
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            if kafka is not None:
                holder.failed(kafka)
            metrics.count(origin, "broker_unavailable")
            logger.warning(
                "push to /%s not acknowledged by Kafka, answered 503: %s",
                path,
                type(exc).__name__,
            )
            return JSONResponse(
                {
                    "code": 503,
                    "msg": "records not acknowledged by the broker; resend",
                    "reason": "broker_unavailable",
                },
                status_code=503,
            )
        metrics.count(origin, "accepted", len(push.records))
        for reason, count in suspects.items():
            metrics.suspect(origin, reason, count)
        if suspects:
            logger.info(
                "push to /%s: %d of %d records published for the dead-letter topic",
                path,
                sum(suspects.values()),
                len(push.records),
            )
        logger.debug("published %s records from /%s", len(push.records), path)
        return JSONResponse(SUCCESS)

    @app.post("/")
    async def message(request: Request) -> JSONResponse:
        return await receive(request, "")

    @app.post("/{endpoint}")
    async def data_push(endpoint: str, request: Request) -> JSONResponse:
        if not endpoint.startswith("push"):
            return JSONResponse(
                {
                    "code": 404,
                    "msg": f"no push endpoint /{endpoint}",
                    "reason": "not_found",
                },
                status_code=404,
            )
        return await receive(request, endpoint)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ready = await holder.reachable()
        return JSONResponse(
            {
                "status": "ok" if ready else "broker_unavailable",
                "producer_restarts": metrics.producer_restarts,
            },
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render())

    return app


def main(settings: Settings) -> None:
    """Serve the receiver until SIGTERM or SIGINT."""
    settings.require_push_token()

    async def serve(stop: asyncio.Event) -> None:
        try:
            await ensure_topics(settings, RAW_TOPICS)
        except (KafkaError, OSError) as exc:
            # Serving anyway lets /healthz say what is wrong; pushes get 503
            # until the broker, and whoever creates the topics, are back.
            logger.warning("raw topics not checked, broker unreachable: %s", exc)
        config = uvicorn.Config(
            create_app(settings),
            host=settings.webhook_host,
            port=settings.webhook_port,
            log_config=None,
            lifespan="on",
        )
        await serve_http(uvicorn.Server(config), stop)
        logger.info("webhook receiver stopped")

    run_until_stopped(serve)

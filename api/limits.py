"""A limit on request bodies: a 413 before the body is read past the limit.

A body whose Content-Length exceeds the limit is refused before any of it is
read. A body sent in chunks without a length is counted as the application
reads it and refused at the chunk that crosses the limit. Nothing after that
chunk reaches the application: the server drops whatever the client still
sends, so an endless body holds no more memory than the limit. A body of a
few million list items takes seconds to parse and validate, and every other
request of the process waits meanwhile; the limit bounds that cost.

The module depends only on ASGI and FastAPI, so any of our FastAPI apps can
wrap itself in ``BodyLimit``.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """A request body over the limit, answered 413 with ``detail`` as the reason.

    It is an HTTPException because FastAPI turns any other error raised while
    it reads a body into a 400, and passes HTTPExceptions on unchanged.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(413, reason)


def declared_length(scope: Scope) -> int | None:
    """Return the request's Content-Length, or None when it has none or no number."""
    for name, value in scope["headers"]:
        # bytes.isdigit() accepts ASCII digits only, all of which int() reads.
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware answering 413 to request bodies over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.limit:
            logger.info(
                "body of %d bytes refused for %.60s, limit %d",
                declared,
                scope["path"],
                self.limit,
            )
            reason = f"body of {declared} bytes exceeds {self.limit}"
            await _refuse(scope, receive, send, reason)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                logger.info(
                    "streamed body refused for %.60s past %d bytes",
                    scope["path"],
                    self.limit,
                )
                raise BodyTooLarge(f"body exceeds {self.limit} bytes")
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            # Routes answer it through the app's own handler; this catches a
            # read made outside them, unless an answer has already begun.
            if started:
                raise
            await _refuse(scope, receive, send, exc.detail)


async def _refuse(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    response = JSONResponse({"detail": reason}, status_code=413)
    await response(scope, receive, send)

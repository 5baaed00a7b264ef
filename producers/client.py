"""Tracksolid Open API client: signing, the response envelope, tokens, retries.

Every call is a signed, form-encoded POST to ``/route/rest``. The access token
of an account is shared by every worker through ``tracksolid.api_token_cache``;
a PostgreSQL advisory lock lets only one process renew it at a time, because
the token endpoint is the most rate-limited one. Each HTTP attempt is written
to ``tracksolid.ingestion_log`` without any secret.

Result codes: ``1004`` renews the token once and retries; ``-1`` and ``1006``
back off exponentially with jitter up to ``tracksolid_max_attempts``; ``1005``
and every other non-zero code are raised. Transport errors are retried like
``1006``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from fleetstream.errors import ConfigError, FleetstreamError
from fleetstream.settings import Settings

logger = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TOKEN_GET = "jimi.oauth.token.get"
TOKEN_REFRESH = "jimi.oauth.token.refresh"
TOKEN_METHODS = (TOKEN_GET, TOKEN_REFRESH)

OK = 0
BUSY = -1
PARAM_ERROR = 1001
TOKEN_INVALID = 1004
IP_LIMITED = 1005
RATE_LIMITED = 1006
RETRIED_CODES = (BUSY, RATE_LIMITED)


class ApiError(FleetstreamError):
    """The platform answered a call with a non-zero result code."""

    def __init__(self, method: str, code: int | None, message: str, **kw) -> None:
        super().__init__(f"{method} failed: code {code}: {message}", **kw)
        self.method = method
        self.code = code
        self.platform_message = message


class TokenError(ApiError):
    """No valid access token could be obtained or the platform rejects it."""


class IpLimitError(ApiError):
    """The platform refuses this IP address (1005)."""


class RetriesExhausted(ApiError):
    """A call kept failing with busy, rate-limit or transport errors."""


def format_time(moment: datetime) -> str:
    """Return ``moment`` as the platform's UTC ``yyyy-MM-dd HH:mm:ss``."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Parse a platform ``yyyy-MM-dd HH:mm:ss`` string, which is UTC."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


def sign(params: Mapping[str, str], secret: str) -> str:
    """Return the upper-case MD5 signature of ``params`` (every one but ``sign``).

    Empty values are left out, names are sorted, each name is followed by its
    value, and the secret wraps the whole string.
    """
    pairs = sorted((k, v) for k, v in params.items() if k != "sign" and k and v)
    text = secret + "".join(k + v for k, v in pairs) + secret
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def result_code(raw: Any) -> int:
    """Return the envelope's ``code`` as an int; it may arrive as a string."""
    try:
        return int(str(raw).strip())
    except ValueError:
        return BUSY


@dataclass(frozen=True)
class Envelope:
    """One decoded response: ``code``, ``message``, ``result`` and ``data``."""

    method: str
    code: int
    message: str
    result: Any
    data: Any
    request_id: str

    @classmethod
    def parse(cls, method: str, body: Any) -> Envelope:
        if not isinstance(body, dict) or "code" not in body:
            raise ValueError("response is not a code/message envelope")
        return cls(
            method=method,
            code=result_code(body["code"]),
            message=str(body.get("message") or body.get("msg") or ""),
            result=body.get("result"),
            data=body.get("data"),
            request_id=uuid.uuid4().hex,
        )

    def elements(self) -> list[Any]:
        """Return the list this response carries, wherever it is, element by element.

        Elements are records (JSON objects) unless the platform erred; those
        are published all the same, for the processor to dead-letter.
        """
        for part in (self.result, self.data):
            if isinstance(part, list):
                return part
            if isinstance(part, dict) and isinstance(part.get("rows"), list):
                return part["rows"]
        return []

    def records(self) -> list[dict[str, Any]]:
        """Return the JSON objects among ``elements()``."""
        return [r for r in self.elements() if isinstance(r, dict)]


@dataclass(frozen=True)
class Token:
    """An account's access token and when it stops working."""

    access_token: str
    refresh_token: str
    expires_at: datetime

    def usable(self, now: datetime, margin_seconds: float) -> bool:
        return self.expires_at - timedelta(seconds=margin_seconds) > now


class _Transport(Exception):
    """An HTTP attempt got no usable envelope."""


class TracksolidClient:
    """Call Open API methods for one account with a shared, cached token."""

    def __init__(
        self,
        settings: Settings,
        pool,
        *,
        worker: str,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        missing = [
            f"FLEETSTREAM_{name.upper()}"
            for name in ("tracksolid_app_key", "tracksolid_user_id")
            if not getattr(settings, name)
        ]
        missing += [
            f"FLEETSTREAM_{name.upper()}"
            for name in ("tracksolid_app_secret", "tracksolid_user_pwd_md5")
            if not getattr(settings, name).get_secret_value()
        ]
        if missing:
            raise ConfigError(
                f"Tracksolid credentials are not set: {', '.join(missing)}",
                hint=f"calls would go to {settings.tracksolid_base_url} unsigned",
            )
        self.settings = settings
        self.pool = pool
        self.worker = worker
        self.account = settings.tracksolid_user_id
        self._http = http or httpx.AsyncClient(
            timeout=settings.tracksolid_http_timeout_seconds
        )
        self._owns_http = http is None
        self._token: Token | None = None
        # Tasks of one process queue here rather than each holding a pooled
        # connection while waiting for the database lock.
        self._renewing = asyncio.Lock()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def call(self, method: str, **params: Any) -> Envelope:
        """Call ``method`` and return its successful envelope, or raise ApiError."""
        imei_count = _imei_count(params)
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            token = None if method in TOKEN_METHODS else await self.access_token()
            try:
                envelope = await self._attempt(method, params, token, imei_count)
            except _Transport as exc:
                await self._back_off(method, attempt, None, describe(exc))
                continue
            if envelope.code == OK:
                return envelope
            if envelope.code == TOKEN_INVALID and token is not None and not renewed:
                renewed = True
                logger.info("%s: token rejected, renewing once", method)
                await self.access_token(stale=token)
                attempt -= 1
                continue
            if envelope.code in RETRIED_CODES:
                await self._back_off(method, attempt, envelope.code, envelope.message)
                continue
            raise _error_for(method, envelope)

    async def _back_off(
        self, method: str, attempt: int, code: int | None, message: str
    ) -> None:
        if attempt >= self.settings.tracksolid_max_attempts:
            raise RetriesExhausted(
                method,
                code,
                f"{message} after {attempt} attempts",
                hint="the platform is busy or rate-limiting; the next cycle retries",
            )
        delay = backoff_delay(
            attempt,
            self.settings.tracksolid_backoff_base_seconds,
            self.settings.tracksolid_backoff_max_seconds,
        )
        # A transport failure has no platform code: say what failed instead.
        reason = f"code {code}" if code is not None else message
        logger.warning(
            "%s: %s, attempt %d of %d, retrying in %.1f s",
            method,
            reason,
            attempt,
            self.settings.tracksolid_max_attempts,
            delay,
        )
        await asyncio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        params: Mapping[str, Any],
        token: Token | None,
        imei_count: int,
    ) -> Envelope:
        form = self._signed_form(method, params, token)
        started = time.monotonic()
        called_at = datetime.now(UTC)
        envelope: Envelope | None = None
        status: int | None = None
        failure = ""
        try:
            response = await self._http.post(
                self.settings.tracksolid_base_url, data=form
            )
            status = response.status_code
            response.raise_for_status()
            envelope = Envelope.parse(method, response.json())
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack. Only
            # the exception type is kept: httpx messages can carry the URL.
            failure = f"{type(exc).__name__}: transport or decoding failed"
        latency_ms = int((time.monotonic() - started) * 1000)
        await self._log_call(
            called_at,
            method,
            imei_count,
            len(envelope.elements()) if envelope else 0,
            envelope.code if envelope else None,
            status,
            latency_ms,
            failure
            if envelope is None
            else (envelope.message if envelope.code else None),
        )
        if envelope is None:
            raise _Transport(failure)
        return envelope

    def _signed_form(
        self, method: str, params: Mapping[str, Any], token: Token | None
    ) -> dict[str, str]:
        form = {
            "method": method,
            "timestamp": format_time(datetime.now(UTC)),
            "app_key": self.settings.tracksolid_app_key,
            "sign_method": "md5",
            "v": "1.0",
            "format": "json",
        }
        if token is not None:
            form["access_token"] = token.access_token
        form.update({k: _text(v) for k, v in params.items() if v is not None})
        form["sign"] = sign(
            form, self.settings.tracksolid_app_secret.get_secret_value()
        )
        return form

    async def _log_call(self, called_at, method, imeis, rows, code, status, ms, error):
        try:
            await self.pool.execute(
                "INSERT INTO tracksolid.ingestion_log (called_at, account, method,"
                " imei_count, record_count, result_code, http_status, duration_ms,"
                " error, worker) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                called_at,
                self.account,
                method,
                imeis,
                rows,
                code,
                status,
                ms,
                error[:500] if error else None,
                self.worker,
            )
        except Exception as exc:
            # The audit row is secondary: losing it must not lose the data.
            logger.warning("ingestion_log row for %s not written: %s", method, exc)

    async def access_token(self, *, stale: Token | None = None) -> Token:
        """Return a usable token, renewing it when due or when ``stale`` was refused.

        The renewal runs under an advisory lock per account, so concurrent
        workers wait for one renewal and then read its result from the cache.
        """
        # A margin as long as the token's life would renew it on every call.
        margin = min(
            self.settings.tracksolid_token_refresh_margin_seconds,
            self.settings.tracksolid_token_expires_in_seconds / 2,
        )
        if (mine := self._own_token(stale, margin)) is not None:
            return mine
        async with self._renewing:
            if (mine := self._own_token(stale, margin)) is not None:
                return mine
            return await self._renew_shared(stale, margin)

    def _own_token(self, stale: Token | None, margin: float) -> Token | None:
        mine = self._token
        if mine is None or mine == stale or not mine.usable(datetime.now(UTC), margin):
            return None
        return mine

    async def _renew_shared(self, stale: Token | None, margin: float) -> Token:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                f"tracksolid.api_token:{self.account}",
            )
            cached = await self._read_cache(conn)
            if (
                cached is not None
                and cached.usable(datetime.now(UTC), margin)
                and (stale is None or cached.access_token != stale.access_token)
            ):
                self._token = cached
                return cached
            token = await self._renew(cached)
            await self._write_cache(conn, token)
        self._token = token
        return token

    async def _read_cache(self, conn) -> Token | None:
        row = await conn.fetchrow(
            "SELECT access_token, refresh_token, expires_at"
            " FROM tracksolid.api_token_cache WHERE account = $1 AND app_key = $2",
            self.account,
            self.settings.tracksolid_app_key,
        )
        if row is None:
            return None
        return Token(row["access_token"], row["refresh_token"] or "", row["expires_at"])

    async def _write_cache(self, conn, token: Token) -> None:
        await conn.execute(
            "INSERT INTO tracksolid.api_token_cache (account, app_key, access_token,"
            " refresh_token, expires_at, obtained_at, owner)"
            " VALUES ($1, $2, $3, $4, $5, now(), $6)"
            " ON CONFLICT (account) DO UPDATE SET app_key = EXCLUDED.app_key,"
            " access_token = EXCLUDED.access_token,"
            " refresh_token = EXCLUDED.refresh_token,"
            " expires_at = EXCLUDED.expires_at, obtained_at = EXCLUDED.obtained_at,"
            " owner = EXCLUDED.owner, updated_at = now()",
            self.account,
            self.settings.tracksolid_app_key,
            token.access_token,
            token.refresh_token,
            token.expires_at,
            self.worker,
        )

    async def _renew(self, cached: Token | None) -> Token:
        expires_in = self.settings.tracksolid_token_expires_in_seconds
        if cached is not None and cached.refresh_token:
            try:
                envelope = await self._token_call(
                    TOKEN_REFRESH,
                    access_token=cached.access_token,
                    refresh_token=cached.refresh_token,
                    expires_in=expires_in,
                )
                logger.info("token of account %s refreshed", self.account)
                return _token_from(envelope)
            except ApiError as exc:
                logger.warning("token refresh failed (%s); requesting a new token", exc)
        envelope = await self._token_call(
            TOKEN_GET,
            user_id=self.account,
            user_pwd_md5=self.settings.tracksolid_user_pwd_md5.get_secret_value(),
            expires_in=expires_in,
        )
        logger.info("new token obtained for account %s", self.account)
        return _token_from(envelope)

    async def _token_call(self, method: str, **params: Any) -> Envelope:
        try:
            return await self.call(method, **params)
        except ApiError as exc:
            if isinstance(exc, TokenError | IpLimitError | RetriesExhausted):
                raise
            raise TokenError(method, exc.code, exc.platform_message) from exc


def describe(exc: BaseException) -> str:
    """Return a one-line account of a transport failure, e.g. ``ConnectError: ...``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Return the wait before retry ``attempt``: doubling, capped, half jittered."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _error_for(method: str, envelope: Envelope) -> ApiError:
    if envelope.code == IP_LIMITED:
        logger.error("%s: the platform refuses this IP address (1005)", method)
        return IpLimitError(
            method,
            envelope.code,
            envelope.message,
            hint="calls from this address exceed the platform's IP limit",
        )
    if envelope.code == TOKEN_INVALID:
        return TokenError(method, envelope.code, envelope.message)
    return ApiError(method, envelope.code, envelope.message)


def _token_from(envelope: Envelope) -> Token:
    result = envelope.result if isinstance(envelope.result, dict) else {}
    access = result.get("accessToken")
    if not access:
        raise TokenError(envelope.method, envelope.code, "no accessToken in result")
    try:
        lifetime = float(result.get("expiresIn") or 0)
    except ValueError:
        lifetime = 0.0
    return Token(
        access_token=str(access),
        refresh_token=str(result.get("refreshToken") or ""),
        expires_at=datetime.now(UTC) + timedelta(seconds=lifetime),
    )


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, list | tuple | set):
        return ",".join(str(v) for v in value)
    return str(value)


def _imei_count(params: Mapping[str, Any]) -> int:
    if params.get("imei"):
        return 1
    imeis = params.get("imeis")
    if not imeis:
        return 0
    if isinstance(imeis, str):
        return len([i for i in imeis.split(",") if i])
    return len(list(imeis))

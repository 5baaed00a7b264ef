"""Database connections and creation of the target database."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fleetstream.errors import ConfigError, FleetstreamError

logger = logging.getLogger(__name__)


def with_database(url: str, database: str) -> str:
    """Return ``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def server_address(url: str) -> str:
    """Return ``host:port`` of ``url``, without user or password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
    return f"{host}:{port}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


class DatabaseUnreachable(FleetstreamError):
    """No PostgreSQL answered at the configured address."""


async def connect(url: str, **options) -> asyncpg.Connection:
    """Return a connection to ``url``.

    What an operator must fix raises a one-line ``FleetstreamError`` that names
    the server, never the user's password: no server answering
    (``DatabaseUnreachable``), a login refused, a URL that is not PostgreSQL's.
    A missing database propagates as asyncpg's own error, which callers that
    create it expect.
    """
    try:
        return await asyncpg.connect(url, **options)
    except OSError as exc:
        # A timeout's text is empty.
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnreachable(
            f"cannot reach PostgreSQL at {server_address(url)}: {reason}"
        ) from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise ConfigError(
            f"PostgreSQL at {server_address(url)} refused the login: {exc}",
            hint="check the user and password in DATABASE_URL",
        ) from exc
    except (asyncpg.ClientConfigurationError, ValueError) as exc:
        raise ConfigError(
            f"DATABASE_URL is not a usable PostgreSQL URL: {exc}",
            hint="postgresql://user:password@host:port/database",
        ) from exc


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` when the server lacks it."""
    name = database_name(url)
    conn = await connect(with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            logger.info("created database %s", name)
    finally:
        await conn.close()


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10):
    """Return a pool whose sessions work in UTC."""
    return await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"timezone": "UTC", "application_name": "fleetstream"},
    )

"""Real services for the test session: a Kafka-compatible broker and PostgreSQL.

``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` point the suite at existing
services (``DATABASE_URL`` names a server where databases may be created);
otherwise the embedded broker and database are started once for the session.
Every test gets its own topic prefix and its own migrated database, cloned from
a template migrated once per session.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from fleetstream.db import with_database
from fleetstream.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from fleetstream.settings import Settings

TEMPLATE_DB = f"fs_template_{os.getpid()}"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fleetstream-state")


@pytest.fixture(scope="session")
def broker(state_dir):
    """Yield ``(bootstrap_servers, broker_profile)`` of a running broker."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers, os.environ.get("FLEETSTREAM_BROKER_PROFILE", "kafka")
        return
    embedded = EmbeddedBroker(free_port(), state_dir / "tansu.log").start()
    yield embedded.bootstrap_servers, "embedded"
    embedded.stop()


@pytest.fixture(scope="session")
def pg_server(state_dir):
    """Yield the URL of the ``postgres`` database on a running server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield with_database(url, "postgres")
        return
    # Not under pytest's tmp_path: the server runs as another user, and pytest
    # keeps its base folder private to the user running the tests.
    server = EmbeddedPostgres(Path("/tmp") / f"fs-pg-{os.getpid()}", free_port())
    server.start()
    yield server.url
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(pg_server):
    """Create and migrate the template database that every test database clones."""
    from migrations.runner import migrate

    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    await admin.close()
    await migrate(with_database(pg_server, TEMPLATE_DB))
    yield TEMPLATE_DB
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    await admin.close()


@asynccontextmanager
async def scratch_database(pg_server: str, prefix: str, template: str | None = None):
    """Create a database for one test and drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    await admin.close()
    try:
        yield with_database(pg_server, name)
    finally:
        admin = await asyncpg.connect(pg_server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(pg_server, template_db):
    """Yield the URL of a migrated database that only this test uses."""
    async with scratch_database(pg_server, "fs_test", template_db) as url:
        yield url


@pytest.fixture
async def empty_database_url(pg_server):
    """Yield the URL of an empty database (no migrations applied)."""
    async with scratch_database(pg_server, "fs_empty") as url:
        yield url


@pytest.fixture
def make_settings(broker, state_dir):
    """Return a factory of test settings with a topic prefix unique to the test."""
    servers, profile = broker
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def factory(**overrides) -> Settings:
        values = {
            "environment": "test",
            "kafka_bootstrap_servers": servers,
            "broker_profile": profile,
            "topic_prefix": prefix,
            "state_dir": state_dir,
            "webhook_push_token": "test-push-token",
            "fleet_timezone": "Africa/Nairobi",
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def settings(make_settings, database_url) -> Settings:
    """Settings for one test: its own topics and its own migrated database."""
    return make_settings(database_url=database_url)

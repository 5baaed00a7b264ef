"""`fleetstream migrate` as an operator runs it: the command, its output, its exit."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from fleetstream.db import with_database
from migrations.runner import ROOT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP_TO_DATE = "database is up to date; nothing pending except routine partition upkeep"


async def migrate_command(url: str, *args: str) -> tuple[int, list[str], str]:
    """Run ``fleetstream migrate`` on ``url``; return its status, lines and stderr."""
    env = {**os.environ, "FLEETSTREAM_ENVIRONMENT": "test", "DATABASE_URL": url}
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "migrate",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(command.communicate(), 120)
    return command.returncode, stdout.decode().splitlines(), stderr.decode()


async def database_exists(pg_server: str, name: str) -> bool:
    conn = await asyncpg.connect(pg_server)
    try:
        return bool(
            await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        )
    finally:
        await conn.close()


async def server_flavour(pg_server: str) -> str:
    conn = await asyncpg.connect(pg_server)
    try:
        offered = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
    finally:
        await conn.close()
    return "timescaledb" if offered else "postgres"


def files_for(kind: str, flavour: str) -> list[str]:
    """Return the file names of one kind a fresh database of ``flavour`` runs."""
    other = ".postgres." if flavour == "timescaledb" else ".timescaledb."
    names = sorted(p.name for p in (ROOT / kind).glob("*.sql") if other not in p.name)
    return [f"{kind} {name}" for name in names]


async def test_dry_run_on_a_missing_database_plans_everything_and_creates_nothing(
    pg_server,
):
    name = f"fs_missing_{uuid.uuid4().hex[:10]}"
    url = with_database(pg_server, name)
    flavour = await server_flavour(pg_server)
    try:
        status, plan, stderr = await migrate_command(url, "--dry-run")

        assert status == 0, stderr[-3000:]
        assert "Traceback" not in stderr
        assert not await database_exists(pg_server, name)
        extension = ["create extension timescaledb"] if flavour == "timescaledb" else []
        assert plan == [
            f'would run create database "{name}"',
            *(f"would run {step}" for step in extension),
            *(f"would run {step}" for step in files_for("versioned", flavour)),
            *(f"would run {step}" for step in files_for("repeatable", flavour)),
            "would run ensure_partitions 3 months",
        ]

        # The plan is what a real run then does, apart from creating the database.
        status, done, stderr = await migrate_command(url)
        assert status == 0, stderr[-3000:]
        assert [line.split(":")[0] for line in done] == [
            line.replace("would run ", "ran ") for line in plan[1:]
        ]
        assert UP_TO_DATE not in done
    finally:
        conn = await asyncpg.connect(pg_server)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_up_to_date_is_said_when_only_partition_upkeep_is_left(
    database_url, empty_database_url
):
    status, planned, stderr = await migrate_command(database_url, "--dry-run")
    assert status == 0, stderr[-3000:]
    assert planned == ["would run ensure_partitions 3 months", UP_TO_DATE]

    status, done, stderr = await migrate_command(database_url)
    assert status == 0, stderr[-3000:]
    assert done == ["ran ensure_partitions 3 months: 0 created", UP_TO_DATE]

    # A database that exists but was never migrated is not up to date.
    status, pending, stderr = await migrate_command(empty_database_url, "--dry-run")
    assert status == 0, stderr[-3000:]
    assert pending[0] == "would run versioned 0001_schemas.sql"
    assert not any("up to date" in line for line in pending)


async def test_an_unreachable_server_is_one_line_without_the_password():
    from fleetstream.embedded import free_port

    url = f"postgresql://fleet:s3cret-pw@127.0.0.1:{free_port()}/fleet"
    for args in ((), ("--dry-run",)):
        status, lines, stderr = await migrate_command(url, *args)
        assert status == 2
        assert lines == []
        assert len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith(
            "fleetstream migrate: cannot reach PostgreSQL at 127.0.0.1:"
        )
        assert "s3cret-pw" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    "url, says",
    [
        ("mysql://fleet:s3cret-pw@127.0.0.1:5432/fleet", "not a usable PostgreSQL URL"),
        (
            "postgresql://fleet:s3cret-pw@127.0.0.1:port/fleet",
            "not a usable PostgreSQL",
        ),
        (None, "refused the login"),
    ],
)
async def test_a_wrong_database_url_is_one_line_without_the_password(
    pg_server, url, says
):
    if url is None:
        # A user the server does not know, on the test server itself.
        server = urlsplit(pg_server)
        url = (
            f"postgresql://nobody_{uuid.uuid4().hex[:6]}:s3cret-pw@"
            f"{server.hostname}:{server.port or 5432}/fleet"
        )
    for args in ((), ("--dry-run",)):
        status, lines, stderr = await migrate_command(url, *args)
        assert status == 2
        assert lines == []
        assert len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith("fleetstream migrate: ")
        assert says in stderr
        assert "s3cret-pw" not in stderr and "Traceback" not in stderr

"""Apply the SQL migrations under ``versioned/`` and ``repeatable/`` to one database.

Versioned files (``NNNN_name.sql``) run once, in number order, each in its own
transaction, and are recorded with the sha256 of their text; editing a file that
has already been applied is refused. Repeatable files (``NNN_name.sql``: views,
functions, policies) run after them in name order, again whenever their text or
the fleet zone they bake in changes, and then every later repeatable file runs
too.

A file named ``name.timescaledb.sql`` or ``name.postgres.sql`` is a variant that
only runs on a database with, or without, TimescaleDB. The choice is made once
per database: a fresh database gets TimescaleDB when the server offers it; a
database already migrated without it stays on native partitioning.

A session-level advisory lock serialises concurrent runners, so every replica
may run ``fleetstream migrate`` at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from fleetstream.db import connect, database_name, ensure_database, with_database
from fleetstream.errors import FleetstreamError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
# Any constant works as long as no other component takes the same advisory key.
LOCK_KEY = 0x46_53_4D_49_47  # "FSMIG"
LEDGER = "fleetstream_migrations.applied"
VARIANT = r"(?:\.(timescaledb|postgres))?\.sql$"
VERSIONED_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)" + VARIANT)
REPEATABLE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+?)" + VARIANT)
PARTITIONS_AHEAD = "3 months"
# Runs after every migration, pending or not: routine upkeep, not a migration.
PARTITION_UPKEEP = f"ensure_partitions {PARTITIONS_AHEAD}"
BAKED_SETTINGS = ("fleet_timezone", "max_fix_gap_seconds")


class MigrationError(FleetstreamError):
    """The migrations on disk and the database disagree."""


@dataclass(frozen=True)
class Script:
    """One SQL file selected for the database's flavour."""

    kind: str
    name: str
    variant: str | None
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def checksum(self, salt: str = "") -> str:
        return hashlib.sha256((self.sql + salt).encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.kind} {self.path.name}"


def discover(kind: str, flavour: str, root: Path = ROOT) -> list[Script]:
    """Return the scripts of one kind that apply to ``flavour``, in run order."""
    folder, pattern = (
        (root / "versioned", VERSIONED_NAME)
        if kind == "versioned"
        else (root / "repeatable", REPEATABLE_NAME)
    )
    scripts: dict[str, Script] = {}
    for path in sorted(folder.glob("*.sql")):
        match = pattern.match(path.name)
        if not match:
            raise MigrationError(
                f"unexpected file name {path.name} in {folder}",
                hint="name files NNNN_name.sql (versioned) or NNN_name.sql "
                "(repeatable), optionally .timescaledb.sql / .postgres.sql",
            )
        name = f"{match.group(1)}_{match.group(2)}"
        variant = match.group(3)
        if variant not in (None, flavour):
            continue
        if name in scripts:
            raise MigrationError(f"{kind} {name} exists twice for {flavour}")
        scripts[name] = Script(kind, name, variant, path)
    return [scripts[name] for name in sorted(scripts)]


async def _ledger(conn: asyncpg.Connection) -> dict[tuple[str, str], asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEDGER)
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT kind, name, variant, checksum FROM {LEDGER}")
    return {(row["kind"], row["name"]): row for row in rows}


async def _create_ledger(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"""
        CREATE SCHEMA IF NOT EXISTS fleetstream_migrations;
        CREATE TABLE IF NOT EXISTS {LEDGER} (
            kind text NOT NULL CHECK (kind IN ('versioned', 'repeatable')),
            name text NOT NULL,
            variant text,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            duration_ms integer NOT NULL,
            PRIMARY KEY (kind, name)
        );
        """
    )


async def _flavour(conn: asyncpg.Connection, ledger: dict) -> tuple[str, bool]:
    """Return the database's flavour and whether the extension must be created."""
    installed = await conn.fetchval(
        "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
    )
    if installed:
        return "timescaledb", False
    if any(kind == "versioned" for kind, _ in ledger):
        return "postgres", False
    available = await conn.fetchval(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    return ("timescaledb", True) if available else ("postgres", False)


async def _create_timescaledb(conn: asyncpg.Connection) -> bool:
    """Create the extension; return False when the server cannot load it."""
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        # Offered but not in shared_preload_libraries: native partitioning works.
        logger.warning(
            "timescaledb offered but not loadable, using native partitioning: %s", exc
        )
        return False
    return True


def _verify(scripts: list[Script], ledger: dict) -> None:
    """Refuse to continue when an applied versioned file has been edited."""
    for script in scripts:
        row = ledger.get(("versioned", script.name))
        if row is not None and row["checksum"] != script.checksum():
            raise MigrationError(
                f"{script.path.name} was applied with checksum "
                f"{row['checksum'][:12]} but now has {script.checksum()[:12]}",
                hint="applied migrations are immutable; revert the edit and add a "
                "new numbered file",
            )
        if row is not None and row["variant"] != script.variant:
            raise MigrationError(
                f"{script.name} was applied as variant {row['variant']} "
                f"but this database now selects {script.variant}"
            )


async def _settings_salt(conn: asyncpg.Connection, overrides: dict[str, str]) -> str:
    """Return the settings that repeatable files bake in, as checksum salt.

    The fleet zone (the continuous aggregate's buckets) and the fix gap (which
    steps its materialised days counted) are fixed at creation; other settings
    are read when a query runs and need no rebuild. ``overrides`` are values
    about to be stored, so that a dry run plans what a run would do.
    """
    exists = await conn.fetchval(
        "SELECT to_regclass('tracksolid.settings') IS NOT NULL"
    )
    if not exists:
        return ""
    rows = await conn.fetch(
        "SELECT key, value FROM tracksolid.settings WHERE key = ANY ($1::text[])",
        list(BAKED_SETTINGS),
    )
    values = {row["key"]: row["value"] for row in rows}
    values.update((k, v) for k, v in overrides.items() if k in BAKED_SETTINGS)
    return "\n-- settings " + json.dumps(dict(sorted(values.items())))


async def _apply(conn: asyncpg.Connection, script: Script, checksum: str) -> None:
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute(script.sql)
        await conn.execute(
            f"""
            INSERT INTO {LEDGER} (kind, name, variant, checksum, duration_ms)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (kind, name) DO UPDATE SET variant = EXCLUDED.variant,
                checksum = EXCLUDED.checksum, applied_at = now(),
                duration_ms = EXCLUDED.duration_ms
            """,
            script.kind,
            script.name,
            script.variant,
            checksum,
            round((time.perf_counter() - started) * 1000),
        )
    logger.info(
        "applied %s in %.0f ms", script.label, (time.perf_counter() - started) * 1000
    )


async def _store_settings(conn: asyncpg.Connection, values: dict[str, str]) -> None:
    for key, value in values.items():
        await conn.execute(
            "INSERT INTO tracksolid.settings (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
            "WHERE tracksolid.settings.value IS DISTINCT FROM EXCLUDED.value",
            key,
            value,
        )


async def _post_steps(conn: asyncpg.Connection) -> list[str]:
    """Run the environment steps that follow every migration."""
    done = []
    has_partitions = await conn.fetchval(
        "SELECT to_regprocedure('tracksolid.ensure_partitions(interval)') IS NOT NULL"
    )
    if has_partitions:
        created = await conn.fetchval(
            "SELECT tracksolid.ensure_partitions($1::text::interval)", PARTITIONS_AHEAD
        )
        done.append(f"{PARTITION_UPKEEP}: {created} created")
    return done


async def _migrate_locked(
    conn: asyncpg.Connection, dry_run: bool, settings: dict[str, str], root: Path
) -> list[str]:
    ledger = await _ledger(conn)
    flavour, create_extension = await _flavour(conn, ledger)
    plan: list[str] = []
    if create_extension:
        if dry_run:
            plan.append("create extension timescaledb")
        elif await _create_timescaledb(conn):
            plan.append("create extension timescaledb")
        else:
            flavour = "postgres"
    versioned = discover("versioned", flavour, root)
    _verify(versioned, ledger)
    if not dry_run:
        await _create_ledger(conn)

    for script in versioned:
        if ("versioned", script.name) in ledger:
            continue
        plan.append(script.label)
        if not dry_run:
            await _apply(conn, script, script.checksum())

    if settings and not dry_run:
        await _store_settings(conn, settings)
    salt = await _settings_salt(conn, settings)
    # Once one repeatable file runs, every later one runs too: it may have dropped
    # and recreated an object that later views are built on.
    rerun = False
    for script in discover("repeatable", flavour, root):
        row = ledger.get(("repeatable", script.name))
        checksum = script.checksum(salt)
        if not rerun and row is not None and row["checksum"] == checksum:
            continue
        rerun = True
        plan.append(script.label)
        if not dry_run:
            await _apply(conn, script, checksum)

    if dry_run:
        plan.append(PARTITION_UPKEEP)
    else:
        plan.extend(await _post_steps(conn))
    logger.info(
        "migrations %s on %s: %d steps",
        "planned" if dry_run else "done",
        flavour,
        len(plan),
    )
    return plan


async def _close(conn: asyncpg.Connection) -> None:
    # PGlite's socket server never answers Terminate, so a polite close can hang.
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except (TimeoutError, OSError):
        conn.terminate()


async def migrate(
    url: str,
    *,
    dry_run: bool = False,
    fleet_timezone: str | None = None,
    max_fix_gap_seconds: float | None = None,
    root: Path = ROOT,
) -> list[str]:
    """Bring the database at ``url`` up to date; return the steps taken or planned.

    ``fleet_timezone`` is stored in ``tracksolid.settings`` (the local day of
    daily reports); omitted, the stored value (default Africa/Nairobi) stays.
    ``max_fix_gap_seconds`` likewise (default 3600): the longest silence a step
    of the daily GPS distance may span.
    ``root`` holds the ``versioned`` and ``repeatable`` folders.
    """
    settings = {"fleet_timezone": fleet_timezone} if fleet_timezone else {}
    if max_fix_gap_seconds is not None:
        settings["max_fix_gap_seconds"] = repr(float(max_fix_gap_seconds))
    server_settings = {"timezone": "UTC", "application_name": "fleetstream-migrate"}
    # No statement cache: PGlite shares one session between successive connections,
    # so cached statement names of an earlier connection would collide.
    conn = await connect(url, server_settings=server_settings, statement_cache_size=0)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _migrate_locked(conn, dry_run, settings, root)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await _close(conn)


async def plan_new_database(url: str, root: Path = ROOT) -> list[str]:
    """Return what a migration would do to the database ``url`` names, not yet made.

    Nothing is created: the server's maintenance database ``postgres`` is asked
    only whether it offers TimescaleDB, which decides the variant files a fresh
    database gets. Like the dry run of an existing database, the plan assumes
    an offered extension also loads.
    """
    conn = await connect(
        with_database(url, "postgres"),
        server_settings={"application_name": "fleetstream-migrate"},
        statement_cache_size=0,
    )
    try:
        available = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
    finally:
        await _close(conn)
    flavour = "timescaledb" if available else "postgres"
    plan = [f'create database "{database_name(url)}"']
    if available:
        plan.append("create extension timescaledb")
    for kind in ("versioned", "repeatable"):
        plan.extend(script.label for script in discover(kind, flavour, root))
    plan.append(PARTITION_UPKEEP)
    logger.info(
        "migrations planned for missing database %s on %s: %d steps",
        database_name(url),
        flavour,
        len(plan),
    )
    return plan


def is_upkeep(step: str) -> bool:
    """Return whether ``step`` is routine partition upkeep rather than a migration."""
    return step.startswith(PARTITION_UPKEEP)


def main(settings, dry_run: bool = False) -> None:
    """Migrate the configured database, creating it first when it is missing.

    A dry run creates nothing: for a missing database it prints that the
    database would be created and every migration would run.
    """

    async def run() -> list[str]:
        if not dry_run:
            await ensure_database(settings.database_url)
        try:
            return await migrate(
                settings.database_url,
                dry_run=dry_run,
                fleet_timezone=settings.fleet_timezone,
                max_fix_gap_seconds=settings.max_fix_gap_seconds,
            )
        except asyncpg.InvalidCatalogNameError:
            if not dry_run:
                raise
            return await plan_new_database(settings.database_url)

    steps = asyncio.run(run())
    for step in steps:
        print(("would run " if dry_run else "ran ") + step)
    if all(is_upkeep(step) for step in steps):
        # Partition upkeep runs on every migration, so it never means pending work.
        upkeep = "; nothing pending except routine partition upkeep" if steps else ""
        print("database is up to date" + upkeep)

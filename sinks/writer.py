"""Write one batch of rows into a sink's tables in a single transaction.

Every target is written on its natural key, so writing the same rows again
changes nothing:

- an append-only table first gets the batch's distinct keys by a plain ``COPY``,
  the fast path while keys are new; when a key already exists the copy fails as
  a whole and the rows go through a staging table and ``INSERT ... SELECT ... ON
  CONFLICT DO NOTHING`` instead, which stays the path until a batch brings only
  new keys again;
- a newest-row table gets the newest row of each key in the batch through the
  staging table and ``ON CONFLICT DO UPDATE ... WHERE`` the row is newer.

When PostgreSQL rejects the batch for a row's data (a constraint, a value out of
range), the batch is split in halves under savepoints until the offending rows
stand alone; they are returned as rejected and every other row is still written
in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import asyncpg

from fleetstream.errors import ConfigError
from sinks.kinds import Append, SinkSpec, Target

logger = logging.getLogger(__name__)

# Errors that belong to the rows, not to the database: SQLSTATE classes 22
# (data exception) and 23 (integrity constraint violation), and the errors
# asyncpg raises while encoding a Python value into a column's binary format.
ROW_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    TypeError,
    ValueError,
    OverflowError,
)

COLUMN_TYPES = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""


def quote(name: str) -> str:
    """Return ``name`` (optionally ``schema.name``) as a quoted SQL identifier."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


@dataclass(frozen=True)
class Rejected:
    """A row PostgreSQL refused, by its index in the batch, and why."""

    index: int
    reason: str


def target_sql(target: Target, columns: Sequence[str], stage: str) -> str:
    """Return the statement that moves the staged rows into ``target``."""
    cols = ", ".join(quote(c) for c in columns)
    key = ", ".join(quote(c) for c in target.key)
    table = quote(target.table)
    if isinstance(target.rule, Append):
        return (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
    order = quote(target.rule.order_by)
    updates = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in target.key
    )
    # The WHERE keeps a late or replayed row from moving a key backwards.
    return (
        f"INSERT INTO {table} AS cur ({cols}) SELECT {cols} FROM {stage} "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates} "
        f"WHERE cur.{order} IS NULL OR EXCLUDED.{order} > cur.{order}"
    )


def affected(status: str) -> int:
    """Return the row count of a command status such as ``INSERT 0 12``."""
    return int(status.rsplit(" ", 1)[-1])


def first_per_key(rows: Sequence[tuple], key) -> list[tuple]:
    """Return the first row of each key, in batch order."""
    seen: dict[Any, tuple] = {}
    for row in rows:
        seen.setdefault(key(row), row)
    return list(seen.values())


def newest_per_key(rows: Sequence[tuple], key, order: int) -> list[tuple]:
    """Return the row of each key with the greatest ``row[order]``; null is oldest.

    ``ON CONFLICT DO UPDATE`` may touch a row only once per statement, so a
    batch holding a key twice must be reduced first; among equals the earliest
    row stays, as the table itself keeps a row against an equal newcomer.
    """
    newest: dict[Any, tuple] = {}
    for row in rows:
        k = key(row)
        held = newest.get(k)
        if held is None or (
            row[order] is not None and (held[order] is None or row[order] > held[order])
        ):
            newest[k] = row
    return list(newest.values())


class _Stage:
    """The connection's temporary staging table; emptied at every commit."""

    def __init__(self, name: str, columns: Sequence[str]) -> None:
        self.name = name
        self.columns = columns
        self.dirty = False

    async def load(self, conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
        if self.dirty:
            await conn.execute(f"TRUNCATE {self.name}")
        await conn.copy_records_to_table(self.name, records=rows, columns=self.columns)
        self.dirty = True


class _Plan:
    """How one target is written from a chunk of rows."""

    def __init__(self, target: Target, columns: Sequence[str], stage: _Stage) -> None:
        self.target = target
        self.columns = columns
        self.stage = stage
        self.statement = target_sql(target, columns, stage.name)
        # A value for a one-column key, a tuple otherwise: either is a dict key.
        self.key = itemgetter(*(columns.index(c) for c in target.key))
        self.append = isinstance(target.rule, Append)
        self.order = None if self.append else columns.index(target.rule.order_by)
        # Whether the next chunk tries the plain COPY first (append-only only).
        self.direct = self.append

    async def write(self, conn: asyncpg.Connection, rows: Sequence[tuple]) -> int:
        if not self.append:
            return await self._staged(conn, newest_per_key(rows, self.key, self.order))
        unique = first_per_key(rows, self.key)
        if self.direct:
            schema, _, table = self.target.table.rpartition(".")
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        table,
                        schema_name=schema or None,
                        records=unique,
                        columns=self.columns,
                    )
                return len(unique)
            except asyncpg.UniqueViolationError:
                self.direct = False
        inserted = await self._staged(conn, unique)
        self.direct = inserted == len(unique)
        return inserted

    async def _staged(self, conn: asyncpg.Connection, rows: Sequence[tuple]) -> int:
        await self.stage.load(conn, rows)
        return affected(await conn.execute(self.statement))


class BatchWriter:
    """Write batches of one sink's rows over one connection.

    ``prepare`` must run once per connection: it checks the target tables
    against the declaration and creates the connection's staging table.
    """

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self._stage = _Stage(f"fs_stage_{spec.kind}", spec.columns)
        self._plans = [_Plan(t, spec.columns, self._stage) for t in spec.targets]

    async def prepare(self, conn: asyncpg.Connection) -> None:
        """Check the targets' columns and create the staging table."""
        types: dict[str, str] = {}
        for target in self.spec.targets:
            found = dict(await conn.fetch(COLUMN_TYPES, target.table))
            missing = [c for c in self.spec.columns if c not in found]
            if missing:
                raise ConfigError(
                    f"table {target.table} lacks columns {missing} that the "
                    f"{self.spec.kind} sink writes",
                    hint="apply the migrations or correct sinks/kinds.py",
                )
            for column in self.spec.columns:
                types.setdefault(column, found[column])
        # Column types only, no constraints: rows must reach the target's own
        # checks, where a rejected row can be told apart from the rest.
        definition = ", ".join(f"{quote(c)} {types[c]}" for c in self.spec.columns)
        await conn.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self._stage.name} ({definition}) "
            "ON COMMIT DELETE ROWS"
        )

    async def write(
        self, conn: asyncpg.Connection, rows: Sequence[tuple]
    ) -> tuple[dict[str, int], list[Rejected]]:
        """Write ``rows`` in one transaction; return rows changed per table, rejects.

        Errors other than a row's data (connection lost, permission, missing
        table) propagate and leave nothing written.
        """
        rejected: list[Rejected] = []
        changed = dict.fromkeys((t.table for t in self.spec.targets), 0)
        self._stage.dirty = False
        async with conn.transaction():
            await self._write_isolating(conn, rows, 0, changed, rejected)
        return changed, rejected

    async def _write_isolating(
        self,
        conn: asyncpg.Connection,
        rows: Sequence[tuple],
        first: int,
        changed: dict[str, int],
        rejected: list[Rejected],
    ) -> None:
        # Rolling back to the savepoint restores the stage as it was before.
        dirty = self._stage.dirty
        try:
            async with conn.transaction():
                counts = [
                    (p.target.table, await p.write(conn, rows)) for p in self._plans
                ]
        except ROW_ERRORS as exc:
            self._stage.dirty = dirty
            if len(rows) == 1:
                rejected.append(Rejected(first, f"{type(exc).__name__}: {exc}"))
                return
            middle = len(rows) // 2
            await self._write_isolating(conn, rows[:middle], first, changed, rejected)
            await self._write_isolating(
                conn, rows[middle:], first + middle, changed, rejected
            )
            return
        for table, count in counts:
            changed[table] += count

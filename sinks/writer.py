"""Write one batch of rows into a sink's tables in a single transaction.

Rows are copied into a temporary staging table, then moved into every target
with one ``INSERT ... SELECT ... ON CONFLICT`` on the target's natural key, so
writing the same rows again changes nothing. When PostgreSQL rejects the batch
for a row's data (a constraint, a value out of range), the batch is split in
halves under savepoints until the offending rows stand alone; they are returned
as rejected and every other row is still written in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

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
        # DO NOTHING also absorbs duplicates inside the batch itself.
        return (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
            f"ON CONFLICT ({key}) DO NOTHING"
        )
    order = quote(target.rule.order_by)
    updates = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in target.key
    )
    # DO UPDATE may touch a row only once per statement, hence one row per key,
    # the newest; the WHERE keeps a late or replayed row from going backwards.
    return (
        f"INSERT INTO {table} AS cur ({cols}) "
        f"SELECT DISTINCT ON ({key}) {cols} FROM {stage} "
        f"ORDER BY {key}, {order} DESC "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates} "
        f"WHERE cur.{order} IS NULL OR EXCLUDED.{order} > cur.{order}"
    )


def affected(status: str) -> int:
    """Return the row count of a command status such as ``INSERT 0 12``."""
    return int(status.rsplit(" ", 1)[-1])


class BatchWriter:
    """Write batches of one sink's rows over one connection.

    ``prepare`` must run once per connection: it checks the target tables
    against the declaration and creates the connection's staging table.
    """

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self.stage = f"fs_stage_{spec.kind}"
        self._statements: list[tuple[str, str]] = []
        self._stage_dirty = False

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
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.stage} ({definition}) "
            "ON COMMIT DELETE ROWS"
        )
        self._statements = [
            (target.table, target_sql(target, self.spec.columns, self.stage))
            for target in self.spec.targets
        ]

    async def write(
        self, conn: asyncpg.Connection, rows: Sequence[tuple]
    ) -> tuple[dict[str, int], list[Rejected]]:
        """Write ``rows`` in one transaction; return rows changed per table, rejects.

        Errors other than a row's data (connection lost, permission, missing
        table) propagate and leave nothing written.
        """
        rejected: list[Rejected] = []
        changed = dict.fromkeys((t.table for t in self.spec.targets), 0)
        self._stage_dirty = False
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
        try:
            async with conn.transaction():
                counts = await self._write_chunk(conn, rows)
        except ROW_ERRORS as exc:
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

    async def _write_chunk(
        self, conn: asyncpg.Connection, rows: Sequence[tuple]
    ) -> list[tuple[str, int]]:
        # A chunk that failed rolled back to its savepoint, restoring whatever
        # the stage held before it; only a chunk that succeeded leaves rows there.
        if self._stage_dirty:
            await conn.execute(f"TRUNCATE {self.stage}")
        await conn.copy_records_to_table(
            self.stage, records=rows, columns=self.spec.columns
        )
        counts = [
            (table, affected(await conn.execute(statement)))
            for table, statement in self._statements
        ]
        self._stage_dirty = True
        return counts

"""Write one batch of rows into a sink's tables in a single transaction.

Every target is written on its natural key, so writing the same rows again
changes nothing:

- an append-only table first gets the batch by a plain ``COPY``, the fast path
  while keys are new; when a key already exists, or comes twice in the batch,
  the copy fails as a whole and the first row of each key goes through a
  staging table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` instead,
  which stays the path until a batch brings only new keys again;
- a newest-row table gets the newest row of each key in the batch through the
  staging table and ``ON CONFLICT DO UPDATE ... WHERE`` the row is newer.

Rows arrive as a polars DataFrame of the sink's columns plus ``INDEX``, each
row's position in the consumed batch, and reach PostgreSQL as binary ``COPY``
data (``sinks.columnar``), never as Python values one at a time.

The COPY data of a batch can be made ahead, in the thread that decoded it
(``BatchWriter.encode_ahead``), so that the connection's turn is spent sending
it rather than encoding. A batch is first written whole in a transaction
without savepoints, each one a round trip. When PostgreSQL rejects it for a
row's data (a constraint, a value out of range) or for a key the plain ``COPY``
found stored, it is rolled back and written again under savepoints, split in
halves until the offending rows stand alone; they are returned as rejected and
every other row is still written in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import polars as pl

from fleetstream.errors import ConfigError
from sinks.columnar import INDEX, CopyEncoder, OutOfRange, one_line
from sinks.kinds import Append, SinkSpec, Target

logger = logging.getLogger(__name__)

# Errors that belong to the rows, not to the database: SQLSTATE classes 22
# (data exception), 23 (integrity constraint violation) and 54 (a limit a value
# exceeds: a key too long for its index, JSON nested too deep), and a value
# that does not fit its column's type when the batch is cast before encoding.
# Nothing broader: a bug that failed every row would otherwise dead-letter them.
ROW_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    pl.exceptions.InvalidOperationError,
    OutOfRange,
)

SYNCHRONOUS_COMMIT = "SET LOCAL synchronous_commit TO {}"

COLUMN_TYPES = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""
# The sink's columns of each target, as they are now.
TARGET_TYPES = """
SELECT t.name, a.attname, format_type(a.atttypid, a.atttypmod)
FROM unnest($1::text[]) AS t (name)
JOIN pg_attribute a ON a.attrelid = t.name::regclass
WHERE a.attname = ANY ($2::text[]) AND a.attnum > 0 AND NOT a.attisdropped
"""


class SchemaChanged(ConfigError):
    """A target's columns differ from those the connection's encoder was made for."""


def _on(flag: bool) -> str:
    return "on" if flag else "off"


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


def first_per_key(rows: pl.DataFrame, key: Sequence[str]) -> pl.DataFrame:
    """Return the first row of each key, in batch order."""
    return rows.unique(subset=list(key), keep="first", maintain_order=True)


def newest_per_key(rows: pl.DataFrame, key: Sequence[str], order: str) -> pl.DataFrame:
    """Return the row of each key with the greatest ``order``; null is oldest.

    ``ON CONFLICT DO UPDATE`` may touch a row only once per statement, so a
    batch holding a key twice must be reduced first; among equals the earliest
    row stays, as the table itself keeps a row against an equal newcomer.
    """
    ranked = rows.sort([order, INDEX], descending=[True, False], nulls_last=True)
    return ranked.unique(subset=list(key), keep="first", maintain_order=True)


@dataclass(frozen=True)
class Encoded:
    """One plan's rows of a batch, their COPY data, and the encoder that made it."""

    rows: pl.DataFrame
    data: bytes
    encoder: CopyEncoder


async def copy_frame(
    conn: asyncpg.Connection,
    table: str,
    rows: pl.DataFrame,
    encoder: CopyEncoder,
    data: bytes | None = None,
) -> None:
    """``COPY`` the encoder's columns of ``rows`` into ``table`` in binary.

    ``data`` is the rows' COPY data when it was encoded ahead.
    """
    if data is None:
        data = encoder.encode(rows)
    schema, _, name = table.rpartition(".")
    # A buffer goes to the socket in one message, where a file object would be
    # read in chunks through a thread. Bytes would be taken for a file's path.
    await conn.copy_to_table(
        name,
        schema_name=schema or None,
        source=memoryview(data),
        columns=encoder.columns,
        format="binary",
    )


class _Stage:
    """The connection's temporary staging table; emptied at every commit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirty = False

    async def load(
        self,
        conn: asyncpg.Connection,
        rows: pl.DataFrame,
        encoder: CopyEncoder,
        data: bytes | None = None,
    ) -> None:
        if self.dirty:
            await conn.execute(f"TRUNCATE {self.name}")
        await copy_frame(conn, self.name, rows, encoder, data)
        self.dirty = True


class _Plan:
    """How one target is written from a chunk of rows."""

    def __init__(self, target: Target, columns: Sequence[str], stage: _Stage) -> None:
        self.target = target
        self.columns = columns
        self.stage = stage
        self.statement = target_sql(target, columns, stage.name)
        self.key = target.key
        self.append = isinstance(target.rule, Append)
        self.order = None if self.append else target.rule.order_by
        # Whether the next chunk tries the plain COPY first (append-only only).
        self.direct = self.append
        self.encoder: CopyEncoder | None = None

    def rows_of(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Return the rows of a batch this plan sends first."""
        if self.append:
            return rows
        return newest_per_key(rows, self.key, self.order)

    async def write(
        self,
        conn: asyncpg.Connection,
        rows: pl.DataFrame,
        *,
        guarded: bool = True,
        ahead: Encoded | None = None,
    ) -> int:
        """Write ``rows``; return how many rows the target gained or changed.

        Unguarded, the plain ``COPY`` runs without a savepoint of its own, so a
        key that already exists aborts the whole transaction: the caller rolls
        back and writes the batch again guarded, when this plan copies no more.
        ``ahead`` is ``rows_of(rows)`` encoded ahead, used if this connection's
        encoder made it.
        """
        if ahead is not None and ahead.encoder is not self.encoder:
            ahead = None
        data = ahead.data if ahead is not None else None
        if not self.append:
            mine = ahead.rows if ahead is not None else self.rows_of(rows)
            return await self._staged(conn, mine, data)
        if self.direct:
            # A key twice in the batch fails the copy like a stored key does.
            table = self.target.table
            try:
                if guarded:
                    async with conn.transaction():
                        await copy_frame(conn, table, rows, self.encoder, data)
                else:
                    await copy_frame(conn, table, rows, self.encoder, data)
                return rows.height
            except asyncpg.UniqueViolationError:
                self.direct = False
                if not guarded:
                    raise
        unique = first_per_key(rows, self.key)
        inserted = await self._staged(conn, unique)
        self.direct = inserted == unique.height
        return inserted

    async def _staged(
        self, conn: asyncpg.Connection, rows: pl.DataFrame, data: bytes | None = None
    ) -> int:
        await self.stage.load(conn, rows, self.encoder, data)
        return affected(await conn.execute(self.statement))


class BatchWriter:
    """Write batches of one sink's rows over one connection.

    ``prepare`` must run once per connection: it checks the target tables
    against the declaration and creates the connection's staging table.
    """

    def __init__(self, spec: SinkSpec) -> None:
        self.spec = spec
        self._stage = _Stage(f"fs_stage_{spec.kind}")
        self._plans = [_Plan(t, spec.columns, self._stage) for t in spec.targets]
        self._tables = [t.table for t in spec.targets]
        # Taken first in each transaction, the lock COPY and INSERT take anyway:
        # no ALTER TABLE can then change a column before the batch commits.
        # ONLY: a partitioned table's columns change only through the parent.
        self._lock = "LOCK TABLE ONLY {} IN ROW EXCLUSIVE MODE".format(
            ", ".join(quote(t) for t in self._tables)
        )
        self._types: set[tuple[str, str, str]] = set()

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
            # Every target and the stage take the same binary COPY data, whose
            # values carry no type: the tables must agree on each column's.
            columns = self.spec.columns
            differ = [c for c in columns if types.get(c, found[c]) != found[c]]
            if differ:
                raise ConfigError(
                    f"table {target.table} types columns {differ} unlike the "
                    f"{self.spec.kind} sink's other tables",
                    hint="give the sink's tables the same column types",
                )
            types.update((c, found[c]) for c in self.spec.columns)
        self._types = {
            (table, column, types[column])
            for table in self._tables
            for column in self.spec.columns
        }
        encoder = CopyEncoder(types)
        for plan in self._plans:
            plan.encoder = encoder
        # Column types only, no constraints: rows must reach the target's own
        # checks, where a rejected row can be told apart from the rest.
        definition = ", ".join(f"{quote(c)} {types[c]}" for c in self.spec.columns)
        await conn.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self._stage.name} ({definition}) "
            "ON COMMIT DELETE ROWS"
        )

    def encode_ahead(self, rows: pl.DataFrame) -> dict[str, Encoded]:
        """Return each target's COPY data for ``rows``, made now to save the
        write the work; safe to call from another thread than the writer's.

        Nothing is made before the first connection has fixed the column types,
        nor for a target whose rows cannot be encoded: the write then encodes
        them itself and isolates the rows at fault.
        """
        made = {}
        for plan in self._plans:
            encoder = plan.encoder
            if encoder is None:
                continue
            mine = plan.rows_of(rows)
            try:
                made[plan.target.table] = Encoded(mine, encoder.encode(mine), encoder)
            except ROW_ERRORS:
                continue
        return made

    async def write(
        self,
        conn: asyncpg.Connection,
        rows: pl.DataFrame,
        *,
        wait_flush: bool | None = None,
        ahead: dict[str, Encoded] | None = None,
    ) -> tuple[dict[str, int], list[Rejected]]:
        """Write ``rows`` in one transaction; return rows changed per table, rejects.

        A rejected row is named by its ``INDEX``, its position in the batch.
        ``wait_flush`` sets ``synchronous_commit`` for this transaction only
        (None keeps the session's): when False the commit returns before its
        WAL is flushed, and a crash of the server can still lose the rows.
        ``ahead`` is what ``encode_ahead(rows)`` returned.

        Errors other than a row's data (connection lost, permission, missing
        table) propagate and leave nothing written.
        """
        # First the batch as a whole with no savepoint, the usual case and the
        # fastest; only when a row fails is it written again with savepoints.
        self._stage.dirty = False
        try:
            async with conn.transaction():
                await self._begin(conn, wait_flush)
                ahead = ahead or {}
                changed = {
                    p.target.table: await p.write(
                        conn, rows, guarded=False, ahead=ahead.get(p.target.table)
                    )
                    for p in self._plans
                }
            return changed, []
        except ROW_ERRORS as exc:
            logger.debug("batch of %d failed whole (%s)", rows.height, type(exc))
        rejected: list[Rejected] = []
        changed = dict.fromkeys((t.table for t in self.spec.targets), 0)
        self._stage.dirty = False
        async with conn.transaction():
            await self._begin(conn, wait_flush)
            await self._write_isolating(conn, rows, changed, rejected)
        return changed, rejected

    async def _begin(self, conn: asyncpg.Connection, wait_flush: bool | None) -> None:
        """Lock the targets and check that their columns are still the types
        the encoder writes, first thing in a transaction.

        Binary ``COPY`` data carries no types: after an ``ALTER TABLE`` a value
        of the old type would be refused or, at the same width, read as the
        new one (a double's bits as a bigint). ``SchemaChanged`` makes the sink
        connect again and read the new types.
        """
        statements = [self._lock]
        if wait_flush is not None:
            statements.insert(0, SYNCHRONOUS_COMMIT.format(_on(wait_flush)))
        await conn.execute("; ".join(statements))
        found = await conn.fetch(TARGET_TYPES, self._tables, list(self.spec.columns))
        if {tuple(row) for row in found} != self._types:
            raise SchemaChanged(
                f"the columns of {', '.join(self._tables)} changed since the "
                f"{self.spec.kind} sink connected",
                hint="the sink connects again and writes the new types",
            )

    async def _write_isolating(
        self,
        conn: asyncpg.Connection,
        rows: pl.DataFrame,
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
            if rows.height == 1:
                reason = one_line(f"{type(exc).__name__}: {exc}")
                rejected.append(Rejected(rows[INDEX].item(), reason))
                return
            middle = rows.height // 2
            await self._write_isolating(conn, rows[:middle], changed, rejected)
            await self._write_isolating(conn, rows[middle:], changed, rejected)
            return
        for table, count in counts:
            changed[table] += count

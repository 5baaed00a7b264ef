"""Counters of one sink: logged as one line now and then, served as metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class SinkStats:
    """What one sink has done since it started.

    ``records`` counts consumed records whose batch was committed; ``rows_written``
    counts table rows PostgreSQL reported inserted or updated, summed over the
    sink's tables (``rows_by_table`` splits it), so a replay adds records but no
    rows.
    """

    kind: str
    records: int = 0
    rows_written: int = 0
    batches: int = 0
    dead_letters: int = 0
    retries: int = 0
    # Times the sink went back to its committed offsets after losing batches
    # that awaited their WAL flush.
    rewinds: int = 0
    assignments: int = 0
    # Partitions the sink's consumer holds now.
    partitions: int = 0
    batch_seconds_total: float = 0.0
    batch_seconds_max: float = 0.0
    rows_by_table: dict[str, int] = field(default_factory=dict)
    # time.monotonic() when the first batch began and the last one committed.
    first_batch_at: float | None = None
    last_commit_at: float | None = None
    # time.time() of the last commit: the wall clock a scraper compares with.
    last_commit_time: float | None = None

    def observe_batch(
        self, records: int, rows: dict[str, int], dead: int, started: float
    ) -> None:
        """Count one batch committed now that began at monotonic ``started``."""
        now = time.monotonic()
        seconds = now - started
        if self.first_batch_at is None:
            self.first_batch_at = started
        self.last_commit_at = now
        self.last_commit_time = time.time()
        self.batches += 1
        self.records += records
        for table, count in rows.items():
            self.rows_by_table[table] = self.rows_by_table.get(table, 0) + count
            self.rows_written += count
        self.dead_letters += dead
        self.batch_seconds_total += seconds
        self.batch_seconds_max = max(self.batch_seconds_max, seconds)

    @property
    def batch_seconds_mean(self) -> float:
        return self.batch_seconds_total / self.batches if self.batches else 0.0

    def summary(self) -> str:
        """Return the counters as one log line."""
        mean_ms = self.batch_seconds_mean * 1000
        max_ms = self.batch_seconds_max * 1000
        return (
            f"sink {self.kind}: {self.records} records, {self.rows_written} rows "
            f"written, {self.batches} batches (mean {mean_ms:.1f} ms, max "
            f"{max_ms:.1f} ms), {self.retries} retries, {self.rewinds} rewinds, "
            f"{self.dead_letters} dead letters"
        )

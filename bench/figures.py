"""The figures a benchmark hands to the summary of ``python -m bench``.

Each benchmark prints its own detailed lines and, when given ``--figures
PATH``, also writes its headline figures there as JSON: what was measured, our
figure, the baseline it is compared with, and the target the ratio (or the
figure itself) must meet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One headline figure of a benchmark.

    ``minimum`` is the least acceptable value of ``ratio`` when ``on_ratio``,
    else of ``ours``; ``maximum`` the greatest (for latencies). A figure with
    neither has no stated target and is reported for information only.
    """

    benchmark: str
    unit: str
    ours: float
    baseline: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    on_ratio: bool = True

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline

    @property
    def target(self) -> str:
        subject = "ratio" if self.on_ratio else self.unit
        if self.minimum is not None:
            return f"{subject} >= {self.minimum:g}"
        if self.maximum is not None:
            return f"{subject} <= {self.maximum:g}"
        return "none stated"

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.on_ratio else self.ours
        if value is None or (self.minimum is None and self.maximum is None):
            return None
        if self.minimum is not None and value < self.minimum:
            return False
        return not (self.maximum is not None and value > self.maximum)


def write_figures(path: str | Path | None, figures: list[Figure]) -> None:
    """Write ``figures`` to ``path`` as JSON; do nothing without a path."""
    if path:
        Path(path).write_text(json.dumps([asdict(f) for f in figures], indent=1))


def read_figures(path: Path) -> list[Figure]:
    """Return the figures a benchmark wrote to ``path``."""
    return [Figure(**item) for item in json.loads(path.read_text())]

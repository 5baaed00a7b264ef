"""Logging set up once per process, at the entry point."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"


def configure(level: str = "INFO", stage: str | None = None) -> None:
    """Send every logger's records to stderr on one line each."""
    fmt = FORMAT if stage is None else FORMAT.replace("%(process)d", f"[{stage}]")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "httpx", "uvicorn.access", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

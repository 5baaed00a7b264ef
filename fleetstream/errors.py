"""Exceptions shared by every stage."""

from __future__ import annotations


class FleetstreamError(Exception):
    """Root of every error fleetstream raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(FleetstreamError):
    """A setting is missing or invalid."""


class ContractError(FleetstreamError):
    """A message does not match its topic's schema."""


class RejectedRecord(FleetstreamError):
    """A record cannot be cleaned; it belongs on the dead-letter topic."""

"""Turning database rows into JSON values the maps can use directly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID


def utc_iso(moment: datetime) -> str:
    """Return ``moment`` as ISO-8601 in UTC with a ``Z`` suffix.

    A naive value comes from a ``timestamp`` column, which this project fills in
    UTC only (every session runs with ``timezone=UTC``).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_value(value: Any) -> Any:
    """Return ``value`` converted to a type that JSON can carry."""
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return one row as a dict of JSON values, keeping the column names."""
    return {name: json_value(value) for name, value in row.items()}


def json_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [json_row(row) for row in rows]

"""Checks every text and time the API accepts, so bad input is a 422, never a 500.

PostgreSQL refuses NUL in text and lone surrogates cannot be encoded as UTF-8;
years outside its range, or at the edge of Python's, overflow on the way. The
types here refuse such values at the boundary with the reason, before a query.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# C0 and C1 controls, DEL, and UTF-16 surrogates (valid in a Python str, not in
# UTF-8): none belongs in a plate, a name or a filter.
UNUSABLE_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same rule for the OpenAPI document, so clients and fuzzers know it.
PRINTABLE_PATTERN = "^[^\u0000-\u001f\u007f-\u009f]*$"
EARLIEST_YEAR = 2000
LATEST_YEAR = 2099


def printable(value: str) -> str:
    """Return ``value`` when it holds no control character or surrogate."""
    found = UNUSABLE_CHARACTER.search(value)
    if found is not None:
        raise ValueError(
            f"holds the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; text must be printable"
        )
    return value


def plausible_time(value: datetime | None) -> datetime | None:
    """Return ``value`` when its year lies in 2000..2099, the fleet's lifetime."""
    if value is not None and not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"year {value.year} is outside {EARLIEST_YEAR}..{LATEST_YEAR}")
    return value


class _Documented:
    """Add ``extra`` to the JSON schema of the annotated type."""

    def __init__(self, **extra: object) -> None:
        self.extra = extra

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(core_schema), **self.extra}


Text = Annotated[str, AfterValidator(printable), _Documented(pattern=PRINTABLE_PATTERN)]
Moment = Annotated[
    datetime,
    AfterValidator(plausible_time),
    _Documented(description=f"a time in the years {EARLIEST_YEAR}..{LATEST_YEAR}"),
]


def invalid(where: tuple[str, ...], reason: str) -> RequestValidationError:
    """Return a 422 for a rule no schema states, shaped like FastAPI's own 422s.

    Clients and the OpenAPI document then see one shape for every 422.
    """
    return RequestValidationError(
        [{"type": "value_error", "loc": where, "msg": reason}]
    )

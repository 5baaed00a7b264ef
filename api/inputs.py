"""Checks every text and time the API accepts, so bad input is a 422, never a 500.

PostgreSQL refuses NUL in text and lone surrogates cannot be encoded as UTF-8;
years outside its range, or at the edge of Python's, overflow on the way. The
types here refuse such values at the boundary with the reason, before a query.

A 422 says where and why, not what: values sent come back as a short prefix at
most, so the answer stays a few KB whatever the request held.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

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
# Longest text a 422 quotes from the request: enough to recognise the value.
ECHO_CHARACTERS = 40
MAX_MESSAGE_CHARACTERS = 200
# A list of 1000 bad plates gives 1000 errors; the first ones show the pattern.
MAX_LISTED_ERRORS = 20


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


# What excerpt() returns for a value a 422 leaves out.
OMITTED = object()


def excerpt(value: Any) -> Any:
    """Return ``value`` fit to quote in a 422, or ``OMITTED``.

    Text is cut to ``ECHO_CHARACTERS`` (an ellipsis marks the cut) and lone
    surrogates become "?", so the answer can be encoded as UTF-8; finite
    numbers of fewer than ``ECHO_CHARACTERS`` digits, booleans and null are
    kept; lists and objects are left out.
    """
    if isinstance(value, str):
        if len(value) > ECHO_CHARACTERS:
            value = value[:ECHO_CHARACTERS] + "\u2026"
        return value.encode("utf-8", "replace").decode("utf-8")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 10**ECHO_CHARACTERS:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return OMITTED


def brief_error(error: dict[str, Any]) -> dict[str, Any]:
    """Return one validation error as location, message and type, input cut short.

    The ``ctx`` of an error is left out: it may hold the value itself, and the
    message already states the rule (length, pattern, range) it came from. The
    one exception is the parser's reason for a body that is not JSON, which
    names no value and is added to the message.
    """
    msg = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and isinstance(reason, str):
        msg = f"{msg}: {reason}"
    brief = {
        "type": str(error.get("type", "value_error")),
        "loc": [
            part if isinstance(part, int) else excerpt(str(part))
            for part in error.get("loc", ())
        ],
        "msg": msg[:MAX_MESSAGE_CHARACTERS],
    }
    quoted = excerpt(error.get("input"))
    if "input" in error and quoted is not OMITTED:
        brief["input"] = quoted
    return brief


def brief_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the first ``MAX_LISTED_ERRORS`` errors, briefly, and how many are left."""
    listed = [brief_error(error) for error in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        left = len(errors) - MAX_LISTED_ERRORS
        listed.append(
            {
                "type": "too_many_errors",
                "loc": ["request"],
                "msg": f"{left} more errors are not listed",
            }
        )
    return listed

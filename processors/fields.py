"""Reading the platform's loosely typed values into plain Python values.

The Tracksolid API sends the same field as a number in one record and a string
in the next, uses empty strings and ``null`` for missing values, mixes three
time formats and marks unknown values with sentinels such as ``-1``. Every
reader here treats ``None`` and ``""`` (after trimming) as missing and raises
``RejectedRecord`` naming the field when a present value cannot be read.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from fleetstream.errors import RejectedRecord

# Unix times above this are milliseconds: 1e11 seconds is the year 5138.
UNIX_MS_THRESHOLD = 100_000_000_000

ACC_ON_VALUES = frozenset({"1", "on", "true", "acc_on"})
ACC_OFF_VALUES = frozenset({"0", "off", "false", "acc_off"})

POS_TYPE_BY_CODE = {1: "GPS", 2: "LBS", 3: "WIFI", 5: "BEACON"}
POS_TYPE_NAMES = frozenset({"GPS", "LBS", "WIFI", "BEACON"})


def present(value: object) -> bool:
    """Return True unless the value is None or an empty or blank string."""
    if value is None:
        return False
    return value.__class__ is not str or bool(value) and not value.isspace()


def first(record: dict, *names: str) -> object:
    """Return the first present value among ``names``, else None."""
    for name in names:
        value = record.get(name)
        if value is not None and (value.__class__ is not str or present(value)):
            return value
    return None


def number(value: object, field: str) -> float | None:
    """Return a finite float from a number or numeric string; None when missing."""
    cls = value.__class__
    # Fast path for JSON numbers; x - x is 0.0 only for finite x.
    if cls is float and value - value == 0.0:
        return value
    if cls is int:
        return float(value)
    if not present(value):
        return None
    if isinstance(value, bool):
        raise RejectedRecord(f"{field} is a boolean, expected a number")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise RejectedRecord(f"{field} is not a number: {value!r:.40}") from None
    if not math.isfinite(result):
        raise RejectedRecord(f"{field} is not a finite number: {value!r:.40}")
    return result


def integer(value: object, field: str) -> int | None:
    """Return an int from a whole number or numeric string; None when missing."""
    result = number(value, field)
    if result is None:
        return None
    if not result.is_integer():
        raise RejectedRecord(f"{field} is not a whole number: {value!r:.40}")
    return int(result)


def text(value: object) -> str | None:
    """Return a trimmed string, or None when missing."""
    if not present(value):
        return None
    return str(value).strip()


def speed_kmh(value: object, field: str) -> float | None:
    """Return a speed in km/h as reported; the platform's -1 (unknown) is None."""
    result = number(value, field)
    if result is None or result < 0:
        return None
    return result


def direction_deg(value: object, field: str) -> int | None:
    """Return a heading 0..359; -1 (unknown) and values outside 0..360 are None."""
    result = number(value, field)
    if result is None or not 0 <= result <= 360:
        return None
    return int(round(result)) % 360


def acc(value: object) -> bool | None:
    """Return the ignition state from 0/1, "0"/"1", "ON"/"OFF" or booleans.

    Absent or unrecognised values are None (unknown), never off.
    """
    if isinstance(value, bool):
        return value
    if not present(value):
        return None
    if isinstance(value, int | float):
        return {0: False, 1: True}.get(value)
    word = str(value).strip().lower()
    if word in ACC_ON_VALUES:
        return True
    if word in ACC_OFF_VALUES:
        return False
    return None


def flag(value: object, field: str) -> bool | None:
    """Return a 0/1 device flag as a boolean; None when missing."""
    result = acc(value)
    if result is None and present(value):
        raise RejectedRecord(f"{field} is not a 0/1 flag: {value!r:.40}")
    return result


def pos_type(value: object) -> str:
    """Return GPS, LBS, WIFI, BEACON or UNKNOWN from a name or a numeric code."""
    if not present(value):
        return "UNKNOWN"
    if isinstance(value, str):
        name = value.strip().upper().replace("-", "")
        if name in POS_TYPE_NAMES:
            return name
        if not name.isdigit():
            return "UNKNOWN"
    try:
        return POS_TYPE_BY_CODE.get(int(float(value)), "UNKNOWN")
    except (TypeError, ValueError):
        return "UNKNOWN"


def epoch_ms(value: object, field: str, zone: ZoneInfo) -> int | None:
    """Return UTC epoch milliseconds from any time format the platform uses.

    Strings without a zone (``yyyy-MM-dd HH:mm:ss``) are read in ``zone``, the
    platform time zone; ISO strings with ``Z`` or an offset keep their own zone;
    numbers and numeric strings are Unix seconds, or milliseconds when they are
    too large to be seconds.
    """
    if not present(value):
        return None
    if isinstance(value, bool):
        raise RejectedRecord(f"{field} is a boolean, expected a time")
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped.replace(".", "", 1).isdigit():
            return _parse_datetime(stripped, field, zone)
    seconds = number(value, field)
    if seconds >= UNIX_MS_THRESHOLD:
        return int(seconds)
    return int(round(seconds * 1000))


def _parse_datetime(value: str, field: str, zone: ZoneInfo) -> int:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedRecord(f"{field} is not a time: {value!r:.40}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return int(parsed.timestamp() * 1000)


def iso(ms: int) -> str:
    """Return an epoch-millisecond time as ISO text for rejection reasons."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

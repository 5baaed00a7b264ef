"""Reading the platform's loosely typed values into plain Python values.

The Tracksolid API sends the same field as a number in one record and a string
in the next, uses empty strings and ``null`` for missing values, mixes three
time formats and marks unknown values with sentinels such as ``-1``. Every
reader here treats ``None`` and ``""`` (after trimming) as missing and raises
``RejectedRecord`` naming the field when a present value cannot be read.
Numbers are read from ASCII text only, and every number, integer and time has a
range; a value outside it is a rejection that names the field, the kind of
value and the range allowed, never a crash of the reader.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleetstream.errors import RejectedRecord

# Unix times above this are milliseconds: 1e11 seconds is the year 5138.
UNIX_MS_THRESHOLD = 100_000_000_000

ACC_ON_VALUES = frozenset({"1", "on", "true", "acc_on"})
ACC_OFF_VALUES = frozenset({"0", "off", "false", "acc_off"})
ACC_BY_NUMBER = {0: False, 1: True}

# Python's float() and int() read any Unicode digit ("٣" is 3) and underscores;
# the platform sends ASCII, so anything else in a number is not a number.
ASCII_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
ASCII_DIGITS = re.compile(r"[0-9]+")
# No platform reading comes near this; larger values are corrupt, not data.
NUMBER_LIMIT = 1e15
# Avro's int and long, the widths of every integer field of the clean schemas.
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# No record, registry dates included, carries a time outside these years.
EPOCH_MS_RANGE = (-2_208_988_800_000, 7_258_118_400_000)  # 1900 to 2200 UTC
NAIVE_EPOCH = datetime(1970, 1, 1)
UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)

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
    """Return a float within ``NUMBER_LIMIT`` from a number or ASCII text, or None."""
    cls = value.__class__
    # Fast path for JSON numbers; x - x is 0.0 only for finite x.
    if cls is float and value - value == 0.0 and -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return value
    if cls is int and -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return float(value)
    if not present(value):
        return None
    if isinstance(value, bool):
        raise RejectedRecord(f"{field} is a boolean, expected a number")
    if isinstance(value, str):
        stripped = value.strip()
        result = _plain_decimal(stripped)
        if result is not None:
            return result
        if ASCII_NUMBER.fullmatch(stripped) is None:
            raise RejectedRecord(
                f"{field} is not a number (ASCII decimal expected): {value!r:.40}"
            )
        value = stripped
    elif not isinstance(value, int | float):
        raise RejectedRecord(f"{field} is a {type(value).__name__}, expected a number")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if math.isnan(result):
        raise RejectedRecord(f"{field} is not a finite number: {value!r:.40}")
    if not -NUMBER_LIMIT <= result <= NUMBER_LIMIT:
        raise RejectedRecord(
            f"{field} is out of range: {_kind(value)}, allowed "
            f"-{NUMBER_LIMIT:.0e}..{NUMBER_LIMIT:.0e}"
        )
    return result


def _plain_decimal(text: str) -> float | None:
    """Return the value of ASCII number text within ``NUMBER_LIMIT``, else None.

    Past ASCII text without underscores, float() reads exactly what
    ``ASCII_NUMBER`` matches plus the words nan and inf, which fail the range
    check; None sends everything else through the full checks and their reasons.
    """
    if not text.isascii() or "_" in text:
        return None
    try:
        result = float(text)
    except ValueError:
        return None
    return result if -NUMBER_LIMIT <= result <= NUMBER_LIMIT else None


def _kind(value: object) -> str:
    """Return a short description of an unusable number, never its whole text."""
    if isinstance(value, int):
        # str() of a huge int is slow and refused past 4300 digits.
        digits = int(value.bit_length() * 0.30103) + 1
        return str(value) if digits <= 20 else f"an integer of about {digits} digits"
    if isinstance(value, str) and len(value) > 40:
        return f"a number written in {len(value)} characters"
    return repr(value)


def integer(value: object, field: str, bounds: tuple[int, int] = INT32) -> int | None:
    """Return an int within ``bounds`` (Avro int by default); None when missing."""
    if value.__class__ is int and -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return bounded(value, field, bounds)
    result = number(value, field)
    if result is None:
        return None
    if not result.is_integer():
        raise RejectedRecord(f"{field} is not a whole number: {value!r:.40}")
    return bounded(int(result), field, bounds)


def bounded(result: int, field: str, bounds: tuple[int, int]) -> int:
    """Return ``result`` when it lies within ``bounds``; reject it otherwise."""
    low, high = bounds
    if not low <= result <= high:
        raise RejectedRecord(
            f"{field} is out of range: {result}, allowed {low}..{high}"
        )
    return result


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
    if value.__class__ is int:
        return ACC_BY_NUMBER.get(value)
    if isinstance(value, bool):
        return value
    if not present(value):
        return None
    if isinstance(value, int | float):
        return ACC_BY_NUMBER.get(value)
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
    if value.__class__ is int and -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        return POS_TYPE_BY_CODE.get(value, "UNKNOWN")
    if not present(value):
        return "UNKNOWN"
    if isinstance(value, str):
        name = value.strip().upper().replace("-", "")
        if name in POS_TYPE_NAMES:
            return name
        if ASCII_DIGITS.fullmatch(name) is None:
            return "UNKNOWN"
    try:
        return POS_TYPE_BY_CODE.get(int(float(value)), "UNKNOWN")
    except (TypeError, ValueError, OverflowError):  # 309 digits make inf
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
        # Four digits and a dash start a date, never a number: skip the pattern.
        is_date = stripped[4:5] == "-" and stripped[:4].isdigit()
        if is_date or ASCII_NUMBER.fullmatch(stripped) is None:
            return _in_time_range(_parse_datetime(stripped, field, zone), value, field)
    seconds = number(value, field)
    if abs(seconds) >= UNIX_MS_THRESHOLD:
        return _in_time_range(int(seconds), value, field)
    return _in_time_range(int(round(seconds * 1000)), value, field)


def _in_time_range(ms: int, value: object, field: str) -> int:
    low, high = EPOCH_MS_RANGE
    if not low <= ms < high:
        raise RejectedRecord(
            f"{field} is out of range: {value!r:.40}, allowed years 1900..2199"
        )
    return ms


def _parse_datetime(value: str, field: str, zone: ZoneInfo) -> int:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedRecord(f"{field} is not a time: {value!r:.40}") from None
    if parsed.tzinfo is None:
        fixed = zone.utcoffset(None)
        if fixed is not None:
            # A zone without transitions (UTC) is one offset: the same
            # milliseconds as below without the zone lookups.
            try:
                return (parsed - fixed - NAIVE_EPOCH) // ONE_MS
            except OverflowError:
                pass
        parsed = parsed.replace(tzinfo=zone)
    try:
        # Exact: a float of seconds times 1000 can land one millisecond short
        # (2004-01-14 00:00:01.597 gave .596), and the same fix pushed as
        # epoch milliseconds would then count as a second fix.
        return (parsed - UTC_EPOCH) // ONE_MS
    except (OverflowError, ValueError):
        # Year 1 or 9999 moved by its offset leaves the calendar.
        raise RejectedRecord(
            f"{field} is out of range: {value!r:.40}, allowed years 1900..2199"
        ) from None


def epoch_ms_of(moment: datetime) -> int:
    """Return the epoch milliseconds of an aware datetime, exactly."""
    return (moment - UTC_EPOCH) // ONE_MS


def iso(ms: int) -> str:
    """Return an epoch-millisecond time as ISO text for rejection reasons."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")

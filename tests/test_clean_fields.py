"""The field readers' shortcuts give what their full rules give."""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections import OrderedDict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetstream.errors import RejectedRecord
from processors import fields as f
from processors.dedupe import RecentFixes

NUMBER_TEXTS = [
    "0",
    "-1",
    "+2",
    "38.0",
    " 43 ",
    "1.",
    ".5",
    "-.5e-3",
    "1e5",
    "1E+5",
    "1e15",
    "1e16",
    "-1e16",
    "1e400",
    "1e",
    "e5",
    ".",
    "1.2.3",
    "1 2",
    "0x10",
    "1_000",
    "nan",
    "NaN",
    "-inf",
    "Infinity",
    "٣٠",
    "３",
    "12abc",
    "--1",
]


def full_rule_number(text: str) -> float | str:
    """Read number text by the pattern alone, as the reader did before."""
    stripped = text.strip()
    if f.ASCII_NUMBER.fullmatch(stripped) is None:
        return "rejected"
    result = float(stripped)
    if result != result or not -f.NUMBER_LIMIT <= result <= f.NUMBER_LIMIT:
        return "rejected"
    return result


def read(text: str) -> float | str:
    try:
        return f.number(text, "speed")
    except RejectedRecord:
        return "rejected"


@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_number_text_reads_as_the_ascii_pattern_says(text):
    assert read(text) == full_rule_number(text)


def zone_rule_ms(text: str, zone: ZoneInfo) -> int:
    """The whole milliseconds since the epoch, by the zone's rules, floored."""
    parsed = datetime.fromisoformat(text).replace(tzinfo=zone)
    return (parsed - datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))) // timedelta(
        milliseconds=1
    )


@pytest.mark.parametrize("zone", ["UTC", "Etc/GMT-3", "Etc/GMT+11", "Africa/Nairobi"])
def test_zone_less_times_give_the_milliseconds_of_the_zone_rules(zone):
    tz = ZoneInfo(zone)
    rng = random.Random(7)
    start = datetime(1900, 1, 2)

    for _ in range(2000):
        moment = start + timedelta(seconds=rng.randrange(0, 300 * 365 * 86400))
        text = moment.isoformat(sep=" ")
        fraction = f"{text}.{rng.randrange(1, 999_999):06d}"

        assert f.epoch_ms(text, "gpsTime", tz) == zone_rule_ms(text, tz)
        assert f.epoch_ms(fraction, "gpsTime", tz) == zone_rule_ms(fraction, tz)


def test_times_past_the_calendar_are_rejected_in_a_fixed_zone():
    for text in ("0001-01-01 00:00:00", "9999-12-31 23:59:59"):
        with pytest.raises(RejectedRecord, match="out of range"):
            f.epoch_ms(text, "gpsTime", ZoneInfo("Etc/GMT-3"))


def test_numeric_time_text_is_still_unix_time():
    utc = ZoneInfo("UTC")

    assert f.epoch_ms("1741583560", "gpsTime", utc) == 1_741_583_560_000
    assert f.epoch_ms("1741583560000", "gpsTime", utc) == 1_741_583_560_000
    assert f.epoch_ms("2025-03-10", "gpsTime", utc) == 1_741_564_800_000


class RuleOfRecentFixes:
    """The memory's rule written plainly: sorted lists, searched every time."""

    def __init__(self, devices: int, per_device: int, horizon_ms: int | None):
        self.devices, self.per_device, self.horizon_ms = devices, per_device, horizon_ms
        self.times: OrderedDict[str, list[int]] = OrderedDict()

    def seen(self, imei: str, t: int) -> bool:
        times = self.times.get(imei)
        if times is None:
            times = self.times[imei] = []
            if len(self.times) > self.devices:
                self.times.popitem(last=False)
        else:
            self.times.move_to_end(imei)
        if times and self.horizon_ms is not None and t < times[-1] - self.horizon_ms:
            return False
        if t in times:
            return True
        insort(times, t)
        drop = len(times) - self.per_device
        if self.horizon_ms is not None:
            drop = max(drop, bisect_left(times, times[-1] - self.horizon_ms))
        del times[: max(drop, 0)]
        return False


@pytest.mark.parametrize("horizon_ms", [None, 40, 400])
def test_fixes_in_order_or_not_are_remembered_by_the_rule(horizon_ms):
    rng = random.Random(3)
    memory = RecentFixes(devices=2, per_device=5, horizon_ms=horizon_ms)
    rule = RuleOfRecentFixes(devices=2, per_device=5, horizon_ms=horizon_ms)

    for step in range(5000):
        imei = str(rng.randrange(3))
        late = rng.random() < 0.3
        t = step * 3 - rng.randrange(0, 60) if late else step * 3

        assert memory.seen(imei, t) == rule.seen(imei, t), step
        assert memory.held(imei) == len(rule.times.get(imei, ())), step


def test_a_pos_type_too_long_for_a_float_is_unknown():
    assert f.pos_type("9" * 400) == "UNKNOWN"


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("2004-01-14 00:00:01.597", 1_074_038_401_597),
        ("2004-01-14T00:00:01.597Z", 1_074_038_401_597),
        ("2038-01-19 03:14:08.001", 2_147_483_648_001),
    ],
)
def test_millisecond_times_are_exact(text, millis):
    for zone in (ZoneInfo("UTC"), ZoneInfo("Europe/Berlin")):
        expected = millis if "Z" in text or zone.key == "UTC" else None
        got = f.epoch_ms(text, "gpsTime", zone)
        if expected is not None:
            assert got == expected
        # Whatever the zone, the fraction survives to the millisecond.
        assert got % 1000 == millis % 1000

"""The envelope reader reads exactly what the codec reads, or leaves it to it."""

from __future__ import annotations

import json
import random

import pytest

from fleetstream.codec import codec
from processors.clean import Raw
from processors.envelope import DATETIME_MS_RANGE, EnvelopeReader

RAW = codec("RawEvent")
READER = EnvelopeReader(RAW)
RECEIVED_AT = 1741590000000  # 2025-03-10T07:00:00Z


def event(**changes) -> dict:
    return {
        "source": "push",
        "origin": "pushgps",
        "received_at": RECEIVED_AT,
        "imei": "860001000000011",
        "payload": json.dumps({"deviceImei": "860001000000011", "lat": -1.2}),
        "request_id": None,
        **changes,
    }


def outcome(read, data: bytes):
    """Return what ``read`` gives for ``data``: a Raw, or the error it raised."""
    try:
        return read(data)
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return type(exc), str(exc)


def by_codec(data: bytes) -> Raw:
    return Raw.from_event(RAW.decode(data))


def assert_same(data: bytes) -> None:
    assert outcome(READER.read, data) == outcome(by_codec, data)


VALID = [
    event(),
    event(imei=None, request_id="r-1"),
    event(source="backfill", origin="jimi.device.track.list" * 8),
    event(payload=json.dumps({"name": "Gari la Mama 🚚", "n": 1}, ensure_ascii=False)),
    event(payload=json.dumps({"long": "x" * 70_000})),
    event(payload='{"name": "\\ud83d cut"}'),
    event(payload="[1, 2]"),
    event(payload="not json"),
    event(received_at=0),
    event(received_at=-1),
    event(received_at=DATETIME_MS_RANGE[0]),
    event(received_at=DATETIME_MS_RANGE[1]),
]


@pytest.mark.parametrize("record", VALID, ids=range(len(VALID)))
def test_every_valid_message_reads_as_the_codec_reads_it(record):
    data = RAW.encode(record)

    assert_same(data)


def test_plain_messages_are_read_field_by_field():
    data = RAW.encode(event(imei=None, request_id="r-1"))

    fields = READER._read_fields(data)

    assert fields == ("push", "pushgps", RECEIVED_AT, None, event()["payload"])


@pytest.mark.parametrize("shift", [-1, 1])
def test_times_datetime_cannot_hold_fail_as_in_the_codec(shift):
    low, high = DATETIME_MS_RANGE
    data = RAW.encode(event(received_at=low - 1 if shift < 0 else high + 1))

    with pytest.raises(Exception) as raised:
        READER.read(data)

    assert outcome(READER.read, data) == (raised.type, str(raised.value))
    assert_same(data)


def test_cut_and_padded_messages_fail_or_read_as_in_the_codec():
    data = RAW.encode(event(request_id="r-1"))

    for end in range(len(data)):
        assert_same(data[:end])
    assert_same(data + b"\x00")
    assert_same(data + b"trailing")


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",  # not UTF-8
        b"\xed\xa0\xbd",  # an encoded lone surrogate
        b"\xc0\xaf",  # an overlong slash
    ],
)
def test_text_that_is_not_utf8_fails_as_in_the_codec(bad):
    good = RAW.encode(event(source="zzz"))

    assert_same(good.replace(b"zzz", bad.ljust(3, b"a")[:3]))


def test_other_headers_and_branches_are_left_to_the_codec():
    data = RAW.encode(event())
    imei_branch = data.index(b"\x02\x1e860001000000011")

    assert_same(b"\x00\x01" + data[2:])
    assert_same(data[:2] + b"\x00" * 8 + data[10:])
    for branch in (b"\x04", b"\x01", b"\x80\x00"):
        assert_same(data[:imei_branch] + branch + data[imei_branch + 1 :])
    assert_same(data[:imei_branch] + b"\x82\x00" + data[imei_branch + 1 :])


def test_random_corruption_reads_as_in_the_codec():
    rng = random.Random(20261204)
    messages = [RAW.encode(record) for record in VALID[:6]]

    for _ in range(3000):
        data = bytearray(rng.choice(messages))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        assert_same(bytes(data))

"""Number plates: one normalisation rule in Python and in SQL."""

from __future__ import annotations

import random

import asyncpg
import pytest

from processors.plates import normalize_plate

CASES = [
    ("KCA 123A", "KCA123A"),
    ("kca-123a", "KCA123A"),
    ("KCA\u00a0123A", "KCA123A"),  # no-break space
    ("KCA\u200b123\u200dA", "KCA123A"),  # zero-width space and joiner
    ("\ufeffKCA 123A", "KCA123A"),  # byte-order mark pasted from a CSV
    ("ＫＣＡ　１２３Ａ", "KCA123A"),  # full-width letters, digits and space
    ("ｋｃａ－１２３ａ", "KCA123A"),  # full-width small letters and hyphen
    ("KCA\u2013123A", "KCA123A"),  # en dash
    ("K.C.A 123A", "KCA123A"),
    ("KCA 1O1", "KCA1O1"),  # O and 0 stay apart
    ("KCA 101", "KCA101"),
    ("KIA 111", "KIA111"),  # I and 1 stay apart
    ("UAX 001\t", "UAX001"),
    ("", None),
    (" - . ", None),
    (None, None),
    ("КСА 123", "КСА123"),  # Cyrillic look-alikes are not Latin
    ("kÿé", "Kÿé"),  # only a..z change case
]


@pytest.mark.parametrize(("plate", "expected"), CASES)
def test_normalize_plate(plate, expected):
    assert normalize_plate(plate) == expected


def random_plates(count: int) -> list[str]:
    pool = (
        "AbcKz019 -.\t\u00a0\u200b\ufeff\u2013\u2212\u3000ＫｚＯ０－．"
        "\u0085\u2028\u00adÿéКІ\ufe63_/"
    )
    rng = random.Random(20261204)
    return [
        "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        for _ in range(count)
    ]


async def test_python_and_sql_agree(database_url):
    plates = [case[0] for case in CASES if case[0] is not None] + random_plates(500)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT p, reporting.normalize_plate(p) AS n FROM unnest($1::text[]) p",
            plates,
        )
    finally:
        await conn.close()
    mismatches = [
        (row["p"], row["n"], normalize_plate(row["p"]))
        for row in rows
        if row["n"] != normalize_plate(row["p"])
    ]
    assert len(rows) == len(plates)
    assert mismatches == []

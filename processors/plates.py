"""The one rule for comparing number plates, shared with the database.

``normalize_plate`` must give the same answer as the SQL function
``reporting.normalize_plate`` (tests/test_clean_plates.py checks both on the
same inputs), because the API looks vehicles up by the normalised plate that
this stage writes. The rule: fold full-width ASCII to ASCII, upper-case, and
drop spaces, hyphens and invisible characters. Look-alike letters and digits
(I and 1, O and 0) stay distinct: they are different plates.
"""

from __future__ import annotations

# U+FF01..U+FF5E are the full-width forms of ASCII 0x21..0x7E; U+3000 is the
# full-width space. Only these are folded, so no other character changes meaning.
FULL_WIDTH_OFFSET = 0xFEE0
_FOLD = {code: code - FULL_WIDTH_OFFSET for code in range(0xFF01, 0xFF5F)}
_FOLD[0x3000] = ord(" ")

_DROPPED = (
    " \t\n\r\f\v"
    "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u202f\u205f\u3000"  # spaces, including no-break spaces
    "-\u00ad\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63"  # hyphens and dashes
    "\u200b\u200c\u200d\u2060\ufeff"  # zero-width characters and the BOM
)
_DROP = {ord(char): None for char in _DROPPED}


def normalize_plate(plate: str | None) -> str | None:
    """Return the comparable form of a plate; None when nothing is left."""
    if plate is None:
        return None
    folded = plate.translate(_FOLD).upper().translate(_DROP)
    return folded or None

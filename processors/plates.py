"""The one rule for comparing number plates, shared with the database.

``normalize_plate`` must give the same answer as the SQL function
``reporting.normalize_plate`` (tests/test_clean_plates.py checks both on the
same inputs), because the API looks vehicles up by the normalised plate that
this stage writes. The rule:

1. full-width ASCII (U+FF01..U+FF5E) becomes the ASCII character it mirrors;
2. whitespace, invisible characters (soft hyphen, zero-width characters, word
   joiner, byte-order mark), hyphens, dashes and dots are removed;
3. a..z become A..Z and nothing else changes case, so look-alikes (I and 1,
   O and 0, Cyrillic and Latin letters) stay different plates;
4. an empty result is None.
"""

from __future__ import annotations

FULL_WIDTH_OFFSET = 0xFEE0

_REMOVED = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # whitespace
    "\xad\u180e\u200b\u200c\u200d\u2060\ufeff"  # invisible characters
    "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212."  # hyphens, dashes, dots
)

_TABLE: dict[int, int | None] = {
    code: code - FULL_WIDTH_OFFSET for code in range(0xFF01, 0xFF5F)
}
_TABLE.update({ord(char): None for char in _REMOVED})
# Full-width characters fold first, so a full-width hyphen or dot goes too and a
# full-width small letter is upper-cased.
for code in range(0xFF01, 0xFF5F):
    ascii_char = chr(code - FULL_WIDTH_OFFSET)
    if ascii_char in _REMOVED:
        _TABLE[code] = None
    elif "a" <= ascii_char <= "z":
        _TABLE[code] = ord(ascii_char.upper())
for code in range(ord("a"), ord("z") + 1):
    _TABLE[code] = code - 32


def normalize_plate(plate: str | None) -> str | None:
    """Return the comparable form of a plate; None when nothing is left."""
    if plate is None:
        return None
    return plate.translate(_TABLE) or None

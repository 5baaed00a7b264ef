-- The one rule that makes two spellings of a number plate compare equal.
--
-- normalize_plate(p):
--   1. Full-width ASCII (U+FF01..U+FF5E) becomes the ASCII character it mirrors
--      (U+0021..U+007E), so 'ＫＣＡ　１２３Ａ' reads as 'KCA 123A'.
--   2. Removed: whitespace (U+0009..U+000D, U+0020, U+0085, U+00A0 no-break space,
--      U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000), invisible
--      characters (U+00AD soft hyphen, U+180E, U+200B..U+200D zero-width space,
--      non-joiner and joiner, U+2060 word joiner, U+FEFF byte-order mark),
--      hyphens and dashes (U+002D, U+2010..U+2015, U+2212 minus) and dots (U+002E).
--   3. ASCII letters a..z become A..Z. Nothing else changes: no other case
--      mapping, no look-alike folding, so I and 1, O and 0, Cyrillic and Latin
--      letters all stay distinct.
--   4. An empty result is NULL.
-- The processors stage applies the same rule in Python; keep both in step.
CREATE OR REPLACE FUNCTION reporting.normalize_plate(p text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
SELECT nullif(
    translate(
        regexp_replace(
            translate(p,
                '！＂＃＄％＆＇（）＊＋，－．／０１２３４５６７８' ||
                '９：；＜＝＞？＠ＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰ' ||
                'ＱＲＳＴＵＶＷＸＹＺ［＼］＾＿｀ａｂｃｄｅｆｇｈ' ||
                'ｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚ｛｜｝～',
                '!"#$%&''()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOP' ||
                'QRSTUVWXYZ[\]^_`abcdefghijklmnopqrstuvwxyz{|}~'),
            '[\u0009-\u000D\u0020\u0085\u00A0\u00AD\u1680\u180E\u2000-\u200D' ||
            '\u2028\u2029\u202F\u205F\u2060\u3000\uFEFF\u002D\u2010-\u2015\u2212.]',
            '', 'g'),
        'abcdefghijklmnopqrstuvwxyz',
        'ABCDEFGHIJKLMNOPQRSTUVWXYZ'),
    '')
$$;
COMMENT ON FUNCTION reporting.normalize_plate(text) IS
    'Canonical number plate: full-width ASCII folded, whitespace, invisible '
    'characters, hyphens, dashes and dots removed, a-z upper-cased; NULL when empty.';

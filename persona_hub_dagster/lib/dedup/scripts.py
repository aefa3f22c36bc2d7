"""Units of text that fit its script, shared by the quality filter's length limits and MinHash's shingles.

Space-separated scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Hangul, ...) are cut into words. Scripts
written without spaces (scriptio continua) are cut into characters, because a regex word there is a whole sentence:
- Han (Chinese, and the kanji of Japanese): one character is one unit, it is a morpheme;
- kana, Thai, Lao, Khmer, Myanmar: letters spell sounds, so a unit is a pair of neighbouring letters (overlapping
  bigrams within a run; a one-letter run is its own unit). A set of single Thai letters would say almost nothing
  about the text (two different Thai personas share most of them); pairs carry the spelling.
Mixed text is cut run by run ("用Python做数据分析" -> 用, python, 做, 数, 据, 分, 析).

All patterns are for polars (Rust regex): `\\w` there includes combining marks, so Devanagari or Thai vowel signs stay
inside their word (Python's `re` would split "हिंदी" at its vowel signs).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

HAN = r"\p{Han}"
# Hiragana, Katakana (with the prolonged sound mark), Katakana phonetic extensions, halfwidth Katakana.
KANA = r"\x{3040}-\x{309F}\x{30A0}-\x{30FF}\x{31F0}-\x{31FF}\x{FF66}-\x{FF9F}"
SOUTHEAST_ASIAN = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
PHONETIC_CONTINUA = KANA + SOUTHEAST_ASIAN
CONTINUA = HAN + PHONETIC_CONTINUA
# One token per match: a word of a space-separated script, one Han character, or a run of phonetic continua letters
# (cut into bigrams afterwards). Digits and underscores count as word characters, as in `\w+`.
UNIT_RUN = rf"[^\W{CONTINUA}]+|{HAN}|[{PHONETIC_CONTINUA}]+"
# A word for length limits: letters (with their marks) joined by apostrophes or hyphens, no digits.
LETTER_WORD = rf"[^\W\d_{CONTINUA}]+(?:['’-][^\W\d_{CONTINUA}]+)*"
# Characters per word in running text, to count a continua script's characters in words for the length limits:
# Chinese words average under two characters, Japanese about two, Thai about four letters (vowel signs included).
CHARACTERS_PER_WORD = {"han_kana": 2.0, "southeast_asian": 4.0}


def unit_frame(texts: Sequence[str]) -> pl.DataFrame:
    """(doc, tok): every text's units in text order, lower-cased; a unit may repeat within a text."""
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String}).with_row_index("doc")
    runs = (
        frame.select("doc", tok=pl.col("text").str.to_lowercase().str.extract_all(UNIT_RUN))
        .explode("tok")
        .drop_nulls("tok")
    )
    phonetic = pl.col("tok").str.contains(rf"^[{PHONETIC_CONTINUA}]{{2,}}$")
    if not runs.select(phonetic.any()).item():
        return runs
    # A phonetic run of n letters gives its n - 1 overlapping letter pairs, in order; other runs stay whole.
    return (
        runs.with_columns(
            phonetic=phonetic,
            sub=pl.int_ranges(0, pl.when(phonetic).then(pl.col("tok").str.len_chars() - 1).otherwise(1)),
        )
        .explode("sub")
        .select("doc", tok=pl.when("phonetic").then(pl.col("tok").str.slice(pl.col("sub"), 2)).otherwise("tok"))
    )


def units(text: str) -> list[str]:
    """The units of one text, in order (for tests and single texts; batches use `unit_frame`)."""
    return unit_frame([text])["tok"].to_list()


def length_frame(texts: Sequence[str]) -> pl.DataFrame:
    """Per text: `words` (letter words of space-separated scripts), `han_kana` and `southeast_asian` (characters of
    the continua scripts), `length_in_words` (all of it in words, for length limits), `letters` (letters and their
    marks) and `visible` (non-space characters)."""
    text = pl.col("text")
    return (
        pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
        .select(
            words=text.str.count_matches(LETTER_WORD),
            han_kana=text.str.count_matches(rf"[{HAN}{KANA}]"),
            southeast_asian=text.str.count_matches(rf"[{SOUTHEAST_ASIAN}]"),
            letters=text.str.count_matches(r"[\p{L}\p{M}]"),
            visible=text.str.count_matches(r"\S"),
        )
        .with_columns(
            length_in_words=pl.col("words")
            + pl.col("han_kana") / CHARACTERS_PER_WORD["han_kana"]
            + pl.col("southeast_asian") / CHARACTERS_PER_WORD["southeast_asian"]
        )
    )

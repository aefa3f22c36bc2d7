"""Text cleaning for raw_text: the same rules for every format, vectorized with polars.

Bump CLEANING_VERSION whenever a rule changes: it is the raw_text asset's code_version, so the UI marks
materialized shards stale and a re-run reproduces them under the new rules.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import polars as pl

CLEANING_VERSION = "1"
UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD")

# C0/C1 control characters except tab, newline and carriage return (handled as whitespace below).
_CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


@dataclass(frozen=True)
class CleaningOptions:
    """How raw_text cleans and filters texts.

    unicode_form: NFC (default) composes characters without changing meaning; NFKC also folds compatibility
    characters (full-width letters, ligatures) but turns `x²` into `x2`, so it is opt-in. None: leave as is.
    min_chars / max_chars: inclusive bounds on the cleaned text's length in characters; texts outside are rejected
    (never truncated: what a later stage sees is what the source said).
    """

    unicode_form: str | None = "NFC"
    min_chars: int = 20
    max_chars: int = 100_000

    def __post_init__(self) -> None:
        if self.unicode_form is not None and self.unicode_form not in UNICODE_FORMS:
            raise ValueError(f"unicode_form must be one of {UNICODE_FORMS} or None, not {self.unicode_form!r}")
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ValueError(f"Need 1 <= min_chars <= max_chars, got {self.min_chars} and {self.max_chars}")


def normalized(texts: pl.Series, unicode_form: str | None) -> pl.Series:
    """Unicode normalization. CPython's unicodedata checks "already normalized" first, which makes it ~35x faster
    than polars' str.normalize on mostly-ASCII web text (measured: 0.03 s vs 1.2 s for 127 MB)."""
    if not unicode_form:
        return texts
    normalize = unicodedata.normalize
    values = [normalize(unicode_form, t) if t is not None else None for t in texts.to_list()]
    return pl.Series(texts.name, values, dtype=pl.String)


def cleaned(text: pl.Expr) -> pl.Expr:
    """Drop control characters and collapse whitespace: runs of spaces and tabs become one space, lines lose their
    edge spaces, runs of blank lines become one blank line, and the ends are trimmed."""
    return (
        text.str.replace_all(r"\r\n?", "\n")
        .str.replace_all(_CONTROL_CHARS, "")
        # Only what needs changing matches (two or more blanks, or one that is not a plain space): matching every
        # single space made this step 5x slower.
        .str.replace_all(r"[^\S\n]{2,}|[^\S \n]", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def clean_records(records: pl.DataFrame, options: CleaningOptions) -> pl.DataFrame:
    """Clean the `text` of readable records and reject the ones that end up empty, too short or too long.

    Adds `original` (the text as read, kept for rejects) and `n_chars`; sets `error`/`detail` on new rejects and
    leaves the reader's own rejects as they were.
    """
    n_chars = pl.col("text").str.len_chars()
    readable = pl.col("error").is_null()
    return (
        records.with_columns(original=pl.col("text"), text=normalized(records["text"], options.unicode_form))
        .with_columns(cleaned(pl.col("text")).alias("text"))
        .with_columns(n_chars=n_chars.cast(pl.Int64))
        .with_columns(
            error=pl.when(~readable)
            .then(pl.col("error"))
            .when(pl.col("n_chars") == 0)
            .then(pl.lit("empty"))
            .when(pl.col("n_chars") < options.min_chars)
            .then(pl.lit("too_short"))
            .when(pl.col("n_chars") > options.max_chars)
            .then(pl.lit("too_long")),
            detail=pl.when(~readable)
            .then(pl.col("detail"))
            .when(pl.col("n_chars") == 0)
            .then(pl.lit("nothing left after cleaning"))
            .when(pl.col("n_chars") < options.min_chars)
            .then(pl.format("{} chars < min_chars {}", pl.col("n_chars"), pl.lit(options.min_chars)))
            .when(pl.col("n_chars") > options.max_chars)
            .then(pl.format("{} chars > max_chars {}", pl.col("n_chars"), pl.lit(options.max_chars))),
        )
    )

"""The quality filter as rule objects (lib/dedup/filters.py): the same decisions as the if-chain it replaced, reasons
read from the rules, thresholds in the rules' constructors, and docs that list the reasons as the rules do.

data/quality_decisions.jsonl holds the if-chain's decisions (commit 7e20c31) on the examples of test_dedup_filters,
the labelled multilingual set (after strip_prompt_frame, as the hub runs it) and variants of them (cut, repeated,
prefixed, doubled) that reach every rule. A deliberate change of the rules re-records it with
`UPDATE_SNAPSHOTS=1 .venv/bin/pytest persona_hub_dagster_tests/test_quality_rules.py`; review the diff.
"""

import dataclasses
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from persona_hub_dagster.lib.dedup import filters
from persona_hub_dagster.lib.dedup.filters import (
    REASONS,
    RULES,
    MostlyNonLetters,
    Repetitive,
    TooLong,
    TooShort,
    measure,
    quality_filter,
)

DECISIONS = Path(__file__).parent / "data" / "quality_decisions.jsonl"
DEDUP_DOC = Path(__file__).resolve().parents[1] / "docs" / "explanation" / "dedup.md"


def recorded() -> list[dict]:
    return [json.loads(line) for line in DECISIONS.read_text(encoding="utf-8").splitlines()]


def test_the_rules_decide_as_the_if_chain_did():
    rows = recorded()
    texts = [r["text"] for r in rows]
    if os.environ.get("UPDATE_SNAPSHOTS"):
        lines = [
            json.dumps({**r, "reason": why}, ensure_ascii=False)
            for r, why in zip(rows, quality_filter(texts), strict=True)
        ]
        DECISIONS.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rows = recorded()
    # Every reason and the scripts the rules read differently are in the record.
    assert {r["reason"] for r in rows} == {*REASONS, None}
    languages = Counter(r["lang"] for r in rows if r["lang"])
    assert {"zh", "th", "ar", "de", "es", "hi", "ja", "en"} <= set(languages), languages
    assert quality_filter(texts) == [r["reason"] for r in rows]


def test_each_example_is_decided_by_the_first_rule_that_rejects_it():
    """Rule by rule: every rule before the deciding one passes the text, the deciding one gives the recorded reason
    (the test examples: Chinese, Thai, Arabic, Hindi, German, Spanish among them)."""
    rows = [r for r in recorded() if not r["source"].startswith("variant")]
    for row, measures in zip(rows, measure([r["text"].strip() for r in rows]), strict=True):
        text = row["text"].strip()
        verdicts = [(rule, rule.check(text, measures)) for rule in RULES]
        deciding = next(((rule, why) for rule, why in verdicts if why is not None), (None, None))
        assert deciding[1] == row["reason"], (row["text"], verdicts)
        assert deciding[0] is None or deciding[1] in deciding[0].reasons


def test_reasons_are_read_from_the_rules():
    assert REASONS == tuple(reason for rule in RULES for reason in rule.reasons)
    assert len(set(REASONS)) == len(REASONS)
    assert all(dataclasses.is_dataclass(rule) and rule.__dataclass_params__.frozen for rule in RULES)
    assert REASONS[:3] == ("empty", "truncated", "too_short")  # the order decides which reason a text gets


@pytest.mark.parametrize(
    ("rules", "text", "reason"),
    [
        ((TooShort(),), "Chess coach.", "too_short"),
        ((TooShort(min_words=2),), "Chess coach.", None),
        ((TooLong(max_words=3),), "A nurse who works nights.", "too_long"),
        ((MostlyNonLetters(min_letter_share=0.9),), "A nurse, 24/7, on ward 12.", "mostly_non_letters"),
        ((Repetitive(phrase_words=2, repeats=2),), "A nurse who works nights and works nights again.", "repetitive"),
        ((Repetitive(),), "A nurse who works nights and works nights again.", None),
        # The order of the rules decides: an empty text is not also too short.
        (RULES, "", "empty"),
        ((TooShort(), filters.Empty()), "", "too_short"),
    ],
)
def test_thresholds_are_the_rules_own(rules, text, reason):
    assert quality_filter([text], rules=rules) == [reason]


def _listed_reasons(text: str) -> list[str]:
    return [name for names in re.findall(r"^- ([a-z_, ]+):", text, flags=re.MULTILINE) for name in names.split(", ")]


def test_the_docs_list_the_reasons_as_the_rules_do():
    assert _listed_reasons(filters.__doc__) == list(REASONS)
    quality = DEDUP_DOC.read_text(encoding="utf-8").split("1. **Quality filters**", 1)[1].split("\n2. ", 1)[0]
    assert [r for r in re.findall(r"`([a-z_]+)`", quality) if r in REASONS] == list(REASONS)
    assert (
        f"`too_short`\n   (< {TooShort().min_words} words)" in quality or f"(< {TooShort().min_words} words)" in quality
    )
    assert f"`too_long` (> {TooLong().max_words})" in quality

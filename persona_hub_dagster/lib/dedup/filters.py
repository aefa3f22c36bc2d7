"""Quality rules for persona descriptions: each rejects for one named reason, on evidence that the text is not a
persona, checked in this order. Anything without such evidence is kept: a persona's head noun is open-ended ("a
fanatic of carousels", "a skeptic about the cryptocurrency hype"), so no list of person words can admit them all.

Each rule is a small object (a `Rule`) holding its thresholds and its reason; `RULES` is the filter, applied in
order, the first rule that rejects giving the reason, and `REASONS` is read from the rules. The reasons, in order
(test_dedup_filters checks this list against RULES):

- empty: nothing but whitespace.
- truncated: a sentence cut off. It ends on a word that needs a continuation ("a self-proclaimed", "el", "的",
  "を"), on a comma, colon, dash or ellipsis, or leaves a bracket open.
- too_short: under MIN_WORDS words, a role label rather than a persona ("Teacher."); continua scripts are counted
  in words (scripts.py), so a Chinese sentence is not one word.
- too_long: over MAX_WORDS words, a story or an essay rather than a description.
- refusal: the model declined or talked about itself ("I'm sorry", "As an AI language model", "抱歉", "Lo siento").
- template_echo: prompt scaffolding leaked into the output: JSON, our text markers, template braces.
- mostly_non_letters: under half of the visible characters are letters (with their marks): markup, numbers, emoji.
- repetitive: one word over a third of the words, a 3-word phrase 3+ times, or in continua scripts a run of 6
  characters 3+ times.
- bare_name: a name with an honorific and nothing else ("Mlle. Anne Marie Bélanger").
- food_or_recipe, place, event, product_or_work: the head noun names a dish, a place, an event or a product, an
  organization or a work ("A delicious chocolate cake recipe.", "The Eiffel Tower, ...", "一座...的古镇"), or the
  text reads as recipe steps.

The head noun is found in English, German and Spanish (the noun that ends the first noun phrase, or starts it in
Spanish) and by the measure word in Chinese (一款 a product, 一座 a place, 一场 an event, 一道 a dish; head_nouns.py);
texts in other languages are judged by the other rules only.

Before the rules, `strip_prompt_frame` removes a leftover frame of the Text-to-Persona prompt ("The person who is
likely to dislike the text above is a ...", "Persona: ...") and keeps the persona inside it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import polars as pl

from persona_hub_dagster.lib.dedup.head_nouns import CATEGORIES, MAX_NOUN_PHRASE, head_category
from persona_hub_dagster.lib.dedup.scripts import CONTINUA, LETTER_WORD, length_frame

MIN_WORDS = 4
MAX_WORDS = 120

_REFUSAL = (
    r"(?i)\b(i['’]m sorry|i am sorry|i apologi[sz]e|i can(?:no|['’])t|i am unable|i['’]m unable|as an ai\b|"
    r"as a (?:large )?language model|i do not have (?:personal|the ability)|i['’]m not able to|"
    r"lo siento|no puedo|como (?:un )?modelo de lenguaje|es tut mir leid|ich kann (?:keine|nicht)|als ki\b|"
    r"je suis désolé|en tant qu['’]ia)|抱歉|对不起|作为(?:一个)?(?:AI|人工智能|语言模型)|"
    r"申し訳(?:ありません|ございません)|AIとして|ขออภัย|عذرًا|عذرا|آسف|क्षमा करें|माफ़ कीजिए"
)
# Scaffolding, not content: a JSON object or a template placeholder, the text markers of our prompts, a label that
# names a field ("json", "schema" alone are fine: "a data engineer who designs JSON schemas" is a persona).
_TEMPLATE = r"(?i)^\s*[\[{]|\{\{|\}\}|<<<|>>>|</?(?:text|persona)>|\"persona\"\s*:|\btext\s*:|\banswer with\b"

# --- the prompt's frame -------------------------------------------------------------------------------------------
_WHO = r"(?:the|this|that|a|such a)\s+(?:person|persona|individual|reader|writer|author|user|one|people|someone)"
_LIKELY = r"(?:who|that)\s+(?:is|are|would be|might be)\s+(?:most\s+|very\s+)?likely\s+to\s+[^.?!]{1,80}?"
_TEXT = r"(?:the|this|that)\s+(?:text|passage|article|document|content|post|piece)(?:\s+(?:above|below))?"
_PROMPT_FRAMES = (
    # An echo of the question: "Who is likely to dislike the text above? ..."
    re.compile(r"^\s*who\s+(?:is|would be)\s+(?:most\s+)?likely\s+to\s+[^?]{1,120}\?\s*", re.IGNORECASE),
    # The answer's frame: "The person who is likely to dislike the text above is ..."
    re.compile(rf"^\s*{_WHO}\s+{_LIKELY}\s+{_TEXT}\s+(?:is|are|would be|might be|could be)\s*:?\s*", re.IGNORECASE),
    re.compile(rf"^\s*{_WHO}\s+(?:is|would be)\s*:?\s*(?=(?:a|an|the|someone)\b)", re.IGNORECASE),
    re.compile(r"^\s*(?:persona(?:\s+description)?|description|answer)\s*:\s*", re.IGNORECASE),
    re.compile(r"^\s*(?:la\s+persona|el\s+lector)\s+que\s+[^,.]{1,80}?\s+es\s+", re.IGNORECASE),
    re.compile(r"^\s*die\s+person,\s+die\s+[^,.]{1,80}?,\s+ist\s+", re.IGNORECASE),
    re.compile(
        r"^\s*(?:最?可能|很可能)?(?:阅读|读|写|喜欢|不喜欢|讨厌)(?:上面|下面|这段|这篇)的?(?:文字|文本|文章)的人(?:是|为)[：:]?"
    ),
)
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»", "「": "」"}


def strip_prompt_frame(persona: str) -> str:
    """The persona without a leftover frame of the prompt or quotes around it; the text itself when it has none."""
    text = persona.strip()
    for _ in range(3):  # frames can nest: 'Persona: "The person who is likely to ... is a ..."'
        before = text
        for frame in _PROMPT_FRAMES:
            text = frame.sub("", text, count=1)
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            break
    if text != persona.strip() and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text if text != persona.strip() else persona


# --- truncation ---------------------------------------------------------------------------------------------------
_DANGLING_WORDS = frozenset(
    # Words that cannot end a sentence: articles, possessive determiners, conjunctions, and adjectives that only stand
    # before a noun. Not prepositions or pronouns: "the causes she cares about", "a mentor who inspired her" are
    # whole sentences.
    """
    a an the his their its my our your and or but nor whose such very
    self-proclaimed so-called would-be wannabe avid aspiring budding fellow former die-hard lifelong longtime
    der die das den dem des ein eine einen einem einer eines und oder für zum zur im vom beim
    el los las un una unos unas de del y con para por que su sus al muy
    le les une des du et ou avec pour dont
    """.split()
)
_DANGLING_END = (
    r"(?:[,;:(\-–—/&]|\.\.\.|…|的|和|与|及|以及|或|对|把|被|从|向|给|关于|去|、|，|の|を|が|に|は|と|や)\s*$"
)
_LAST_WORD = r"([^\W\d_]+(?:['’-][^\W\d_]+)*)[\s.!?]*$"
_PAIRS = (("(", ")"), ("[", "]"), ("“", "”"), ("«", "»"), ("「", "」"), ("（", "）"))


# --- evidence of a bare name, of a recipe ---------------------------------------------------------------------
_HONORIFIC = re.compile(
    r"^(?:mr|mrs|ms|mx|miss|dr|prof|sir|dame|lord|lady|mlle|mme|m|herr|frau|sr|sra|srta|don|doña|dott|sig|sig\.ra)\.?"
    r"(?:\s+|$)",
    re.IGNORECASE,
)
_NAME_PARTICLES = frozenset("de la del van von der den du da di dos das bin ibn al el y le".split())
_RECIPE_STEPS = (
    r"(?i)\b(?:preheat|tablespoons?|teaspoons?|tbsp|tsp|ingredients\s*:|bake for|stir in|simmer for|serves \d)\b"
)


# --- the rules ----------------------------------------------------------------------------------------------------
Measures = Mapping[str, Any]
_TEXT = pl.col("text")


class Rule:
    """One quality rule: it rejects a text for `reason` on evidence that the text is not a persona.

    `columns` are what the rule measures over the whole batch, as polars expressions (the patterns run in Rust) of the
    stripped `text` and of the lengths of scripts.length_frame. A rule decided by its columns alone names its verdict
    column after its reason; a rule that needs Python for each text overrides `check`, which sees the text and its row
    of measures (the rules' columns, `words`: lower-case letter words, `continua`: whether a continua script occurs).
    """

    reason: ClassVar[str]

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every reason this rule can give."""
        return (self.reason,)

    def columns(self) -> dict[str, pl.Expr]:
        return {}

    def check(self, text: str, measures: Measures) -> str | None:
        """The reason this rule rejects `text` for, or None."""
        return self.reason if measures[self.reason] else None


@dataclass(frozen=True)
class Empty(Rule):
    """Nothing but whitespace."""

    reason: ClassVar[str] = "empty"

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: _TEXT == ""}


@dataclass(frozen=True)
class Truncated(Rule):
    """A sentence cut off: it ends on a word that needs a continuation (`dangling_words`) or on a comma, colon, dash
    or ellipsis (`dangling_end`), or it leaves one of the `brackets` open."""

    reason: ClassVar[str] = "truncated"
    dangling_end: str = _DANGLING_END
    dangling_words: frozenset[str] = _DANGLING_WORDS
    brackets: tuple[tuple[str, str], ...] = _PAIRS

    def columns(self) -> dict[str, pl.Expr]:
        open_bracket = [
            _TEXT.str.count_matches(left, literal=True) > _TEXT.str.count_matches(right, literal=True)
            for left, right in self.brackets
        ]
        # As written: a capital "A" ends "Plan A", a lower-case one is an article with its noun cut off.
        dangling_word = _TEXT.str.extract(_LAST_WORD, 1).is_in(sorted(self.dangling_words)).fill_null(False)
        return {self.reason: _TEXT.str.contains(self.dangling_end) | pl.any_horizontal(open_bracket) | dangling_word}


@dataclass(frozen=True)
class TooShort(Rule):
    """Under `min_words` words (continua scripts counted in words, scripts.py): a role label, not a persona."""

    reason: ClassVar[str] = "too_short"
    min_words: int = MIN_WORDS

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: pl.col("length_in_words") < self.min_words}


@dataclass(frozen=True)
class TooLong(Rule):
    """Over `max_words` words: a story or an essay rather than a description."""

    reason: ClassVar[str] = "too_long"
    max_words: int = MAX_WORDS

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: pl.col("length_in_words") > self.max_words}


@dataclass(frozen=True)
class Refusal(Rule):
    """The model declined or talked about itself."""

    reason: ClassVar[str] = "refusal"
    pattern: str = _REFUSAL

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: _TEXT.str.contains(self.pattern)}


@dataclass(frozen=True)
class TemplateEcho(Rule):
    """Prompt scaffolding leaked into the output: JSON, our text markers, template braces."""

    reason: ClassVar[str] = "template_echo"
    pattern: str = _TEMPLATE

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: _TEXT.str.contains(self.pattern) | _TEXT.str.ends_with("{") | _TEXT.str.ends_with("}")}


@dataclass(frozen=True)
class MostlyNonLetters(Rule):
    """Under `min_letter_share` of the visible characters are letters (with their marks): markup, numbers, emoji."""

    reason: ClassVar[str] = "mostly_non_letters"
    min_letter_share: float = 0.5

    def columns(self) -> dict[str, pl.Expr]:
        return {self.reason: pl.col("letters") < self.min_letter_share * pl.col("visible")}


@dataclass(frozen=True)
class Repetitive(Rule):
    """One word (of `min_word_chars`+ letters) over `max_word_share` of the words (from `min_words` words on), a
    `phrase_words`-word phrase `repeats`+ times, or in continua scripts a run of `character_run` characters `repeats`+
    times ("我喜欢我喜欢我喜欢..." has no words to count)."""

    reason: ClassVar[str] = "repetitive"
    min_words: int = 9
    min_word_chars: int = 4
    max_word_share: Fraction = Fraction(1, 3)
    phrase_words: int = 3
    repeats: int = 3
    character_run: int = 6

    def check(self, text: str, measures: Measures) -> str | None:
        words, share = measures["words"], self.max_word_share
        top = max(Counter(w for w in words if len(w) >= self.min_word_chars).values(), default=0)
        if len(words) >= self.min_words and top * share.denominator > share.numerator * len(words):  # top > share·n
            return self.reason
        phrases = Counter(zip(*(words[i:] for i in range(self.phrase_words)), strict=False))
        if phrases and phrases.most_common(1)[0][1] >= self.repeats:
            return self.reason
        return self.reason if measures["continua"] and self._repeated_run(text) else None

    def _repeated_run(self, text: str) -> bool:
        compact = re.sub(r"\s+", "", text)
        runs = Counter(compact[i : i + self.character_run] for i in range(len(compact) - self.character_run + 1))
        return bool(runs) and runs.most_common(1)[0][1] >= self.repeats


@dataclass(frozen=True)
class BareName(Rule):
    """A name with an honorific and nothing else: up to `max_names` words after it, each capitalized or a name
    particle ("Mlle. Anne Marie Bélanger")."""

    reason: ClassVar[str] = "bare_name"
    max_names: int = 6

    def check(self, text: str, measures: Measures) -> str | None:
        if not _HONORIFIC.match(text):
            return None
        names = _HONORIFIC.sub("", text, count=1).strip(" .,").split()
        named = 0 < len(names) <= self.max_names and all(w[:1].isupper() or w.lower() in _NAME_PARTICLES for w in names)
        return self.reason if named else None


@dataclass(frozen=True)
class NotAPerson(Rule):
    """The text describes a dish, a place, an event or a product, organization or work instead of a person: its head
    noun names one (English, German, Spanish: in a first noun phrase of at most `max_noun_phrase` words; Chinese: by
    the measure word; head_nouns.py), or it reads as recipe steps (`min_recipe_markers`+ of them). Its reason is the
    category."""

    max_noun_phrase: int = MAX_NOUN_PHRASE
    min_recipe_markers: int = 2

    @property
    def reasons(self) -> tuple[str, ...]:
        return CATEGORIES

    def columns(self) -> dict[str, pl.Expr]:
        return {"recipe_steps": _TEXT.str.count_matches(_RECIPE_STEPS) >= self.min_recipe_markers}

    def check(self, text: str, measures: Measures) -> str | None:
        if measures["recipe_steps"]:
            return "food_or_recipe"
        return head_category(text, measures["words"], max_phrase=self.max_noun_phrase)


# The filter: the rules in order; a text's reason is that of the first rule that rejects it.
RULES: tuple[Rule, ...] = (
    Empty(),
    Truncated(),
    TooShort(),
    TooLong(),
    Refusal(),
    TemplateEcho(),
    MostlyNonLetters(),
    Repetitive(),
    BareName(),
    NotAPerson(),
)
REASONS = tuple(reason for rule in RULES for reason in rule.reasons)


def quality_filter(personas: Sequence[str | None], rules: Sequence[Rule] = RULES) -> list[str | None]:
    """For each persona, the reason it is rejected (one of REASONS), or None when it passes."""
    texts = [(p or "").strip() for p in personas]
    checks = [rule.check for rule in rules]
    return [_first_reason(checks, text, row) for text, row in zip(texts, measure(texts, rules), strict=True)]


def measure(texts: Sequence[str], rules: Sequence[Rule] = RULES) -> list[dict[str, Any]]:
    """Each (stripped) text's measures: the rules' columns, its letter `words` and whether it has `continua` script."""
    column = pl.Series("text", texts, dtype=pl.String)
    frame = length_frame(texts).with_columns(
        column,
        # Letter words of the space-separated scripts (with their marks: Devanagari vowel signs stay in the word).
        words=column.str.to_lowercase().str.extract_all(LETTER_WORD).fill_null([]),
        continua=column.str.contains(f"[{CONTINUA}]"),
    )
    columns = {name: expression for rule in rules for name, expression in rule.columns().items()}
    return list(frame.with_columns(**columns).drop("text").iter_rows(named=True))


def _first_reason(checks: Sequence[Callable[[str, Measures], str | None]], text: str, measures: Measures) -> str | None:
    for check in checks:
        reason = check(text, measures)
        if reason is not None:
            return reason
    return None

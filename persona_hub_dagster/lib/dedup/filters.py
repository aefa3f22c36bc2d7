"""Quality filters for persona descriptions: each rejects for one named reason, checked in this order.

| reason | rejects |
|---|---|
| empty | nothing but whitespace |
| too_short | fewer than MIN_WORDS words: a role label, not a persona ("Teacher.") |
| too_long | more than MAX_WORDS words: a story or an essay, not a description |
| refusal | the model declined or talked about itself ("I'm sorry", "As an AI language model") |
| template_echo | prompt scaffolding leaked into the output (JSON braces, "persona:", our text markers) |
| mostly_non_letters | under half of the characters are letters (markup, numbers, emoji strings) |
| repetitive | degenerate repetition: one word is over a third of the words, or a 3-word phrase recurs 3+ times |
| not_a_person | English text where nothing points to a person: no person noun, role suffix, pronoun or "who" |

The last is a heuristic with a generous vocabulary: it exists to catch outputs that describe a thing, a place or an
event ("A delicious chocolate cake recipe."), not to judge persona quality; text in other languages is not judged.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

MIN_WORDS = 4
MAX_WORDS = 120

REASONS = (
    "empty",
    "too_short",
    "too_long",
    "refusal",
    "template_echo",
    "mostly_non_letters",
    "repetitive",
    "not_a_person",
)

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_REFUSAL = re.compile(
    r"\b(i['’]m sorry|i am sorry|i apologi[sz]e|i can(?:no|['’])t|i am unable|i['’]m unable|as an ai\b|"
    r"as a (?:large )?language model|i do not have (?:personal|the ability)|i['’]m not able to)",
    re.IGNORECASE,
)
_TEMPLATE = re.compile(
    r"[{}\[\]<>]|\bpersonas?\s*:|\b(?:json|schema)\b|<<<|>>>|\btext\s*:|\{\{|\}\}|\banswer with\b",
    re.IGNORECASE,
)
_PERSON_WORDS = frozenset(
    """
    person people someone somebody individual man woman men women boy girl child children kid kids teen teenager
    adult parent parents mother father mom dad mum son daughter brother sister grandparent grandmother grandfather
    wife husband partner spouse family friend neighbor neighbour colleague student pupil teacher professor doctor
    nurse chef cook engineer scientist researcher developer programmer artist writer author poet musician singer
    player athlete coach fan enthusiast hobbyist expert specialist professional amateur beginner novice veteran
    retiree owner manager employee worker staff volunteer member citizen resident local tourist traveler traveller
    customer client patient reader viewer listener user gamer collector lawyer judge officer soldier pilot driver
    farmer nurse clerk cashier baker butcher tailor mechanic plumber electrician carpenter technician analyst
    consultant entrepreneur founder executive director editor journalist reporter photographer designer architect
    historian librarian curator archivist activist advocate candidate politician official mayor priest pastor
    monk nun rabbi imam caregiver guardian mentor tutor trainer instructor guide host chef waiter waitress barista
    bartender dentist pharmacist therapist psychologist counselor counsellor surgeon paramedic midwife vet
    veterinarian beekeeper fisherman fisher hunter gardener homeowner landlord tenant commuter shopper investor
    trader accountant actuary banker economist statistician mathematician physicist chemist biologist geologist
    astronomer linguist translator interpreter he she him her his hers who whose whom fisherman chairman
    chairwoman policeman policewoman salesman saleswoman craftsman craftswoman fireman postman businessman
    businesswoman sportsman sportswoman spokesman spokeswoman tradesman foreman horseman gentleman
    """.split()
)
_ENGLISH_FUNCTION_WORDS = frozenset("the a an and of with in on for to at by from who that".split())
_ROLE_SUFFIX = re.compile(r"(?:er|or|ist|ian|ant|ent|eer|ee|ess|smith|wright|ster)s?$")


def quality_filter(personas: Sequence[str]) -> list[str | None]:
    """For each persona, the reason it is rejected (one of REASONS), or None when it passes."""
    return [rejection_reason(p) for p in personas]


def rejection_reason(persona: str | None) -> str | None:
    text = (persona or "").strip()
    if not text:
        return "empty"
    words = _WORD.findall(text)
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    if _REFUSAL.search(text):
        return "refusal"
    if _TEMPLATE.search(text):
        return "template_echo"
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.5 * len(visible):
        return "mostly_non_letters"
    lower = [w.lower() for w in words]
    if _repetitive(lower):
        return "repetitive"
    if _looks_english(lower) and not any(w in _PERSON_WORDS or (len(w) > 4 and _ROLE_SUFFIX.search(w)) for w in lower):
        return "not_a_person"
    return None


def _looks_english(words: list[str]) -> bool:
    """The person vocabulary is English: other languages are not judged by it."""
    return sum(w in _ENGLISH_FUNCTION_WORDS for w in words) >= 2


def _repetitive(words: list[str]) -> bool:
    counts = Counter(w for w in words if len(w) > 3)
    if counts and len(words) >= 9 and counts.most_common(1)[0][1] > len(words) / 3:
        return True
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and trigrams.most_common(1)[0][1] >= 3

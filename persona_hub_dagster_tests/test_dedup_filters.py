"""Quality filters: each reason, and personas that must pass."""

import pytest

from persona_hub_dagster.lib.dedup.filters import MAX_WORDS, REASONS, quality_filter


@pytest.mark.parametrize(
    ("persona", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("Chess coach.", "too_short"),
        ("An avid " + "very " * MAX_WORDS + "keen gardener.", "too_long"),
        ("I'm sorry, but I cannot create a persona for that text.", "refusal"),
        ("As an AI language model, I do not have personal opinions about gardening.", "refusal"),
        ('{"persona": "a baker who wakes at four every morning"}', "template_echo"),
        ("Persona: a baker who wakes at four every morning.", "template_echo"),
        ("Text: <<< a nurse on night shifts >>> is the reader", "template_echo"),
        (
            "Fan 🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉 of 🚀🚀🚀🚀🚀🚀🚀🚀 space 💫💫💫💫💫💫💫 travel ⭐⭐⭐⭐⭐⭐⭐",
            "mostly_non_letters",
        ),
        ("A teacher teacher teacher teacher teacher teacher who teaches teacher teacher", "repetitive"),
        ("A nurse who works nights who works nights who works nights at the clinic", "repetitive"),
        ("A delicious chocolate cake recipe with fresh strawberries.", "not_a_person"),
        ("The history of the Roman aqueducts and their construction.", "not_a_person"),
    ],
)
def test_each_reason(persona, reason):
    assert reason in REASONS
    assert quality_filter([persona]) == [reason]


@pytest.mark.parametrize(
    "persona",
    [
        "A retired sailor who collects stamps from former colonies.",
        "A pediatric nurse working night shifts at a busy city hospital.",
        "Someone who enjoys long walks and quiet evenings with a good novel.",
        "An avid birdwatcher documenting migratory patterns along the estuary.",
        "A first-year chemistry student struggling with organic reaction mechanisms.",
        "Una enfermera que trabaja de noche en un hospital infantil.",
    ],
)
def test_real_personas_pass(persona):
    assert quality_filter([persona]) == [None]

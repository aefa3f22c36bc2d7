"""The two persona stages of the method: Text-to-Persona (who reads, writes, likes or dislikes a text) and
Persona-to-Persona (the people in close relationships with a persona, hop after hop); here, what both share: a
persona's canonical form and its id."""

from __future__ import annotations

import re
import unicodedata

from persona_hub_dagster.lib.ids import content_id

# Shorter than this is no description of a person: a generated persona is rejected, a given one quarantined.
MIN_PERSONA_CHARS = 8
# The relation of a ready-made persona (a persona shard's record): it was given, not inferred from a text.
GIVEN = "given"

_SPACE_RE = re.compile(r"\s+")
_QUOTES = "\"'“”‘’`"


def normalize_description(text: str) -> str:
    """A model's one-sentence description (a persona, a relation, a field of a task's answer), tidied: NFC, one line,
    no wrapping quotes."""
    text = _SPACE_RE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def persona_id(persona: str) -> str:
    """Stable id of a persona: the hash of its normalized, case-folded description."""
    return content_id(normalize_description(persona).casefold())

"""The two persona stages of the method: Text-to-Persona (who reads, writes, likes or dislikes a text) and
Persona-to-Persona (the people in close relationships with a persona, hop after hop)."""

# Shorter than this is no description of a person: a generated persona is rejected, a given one quarantined.
MIN_PERSONA_CHARS = 8
# The relation of a ready-made persona (a persona shard's record): it was given, not inferred from a text.
GIVEN = "given"

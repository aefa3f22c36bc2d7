"""text_personas and expanded_personas: the two persona stages, each with a rejects table beside it."""

from persona_hub_dagster.defs.stages import stage_asset
from persona_hub_dagster.lib.personas import persona_to_persona, text_to_persona

text_to_persona_asset = stage_asset(text_to_persona.STAGE, group="personas")
# Persona-to-Persona is the expensive stage: the nightly schedule runs it, not automation (defs/automation.py).
persona_to_persona_asset = stage_asset(persona_to_persona.STAGE, group="personas", automated=False)

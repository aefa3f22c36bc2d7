"""text_personas and expanded_personas: the two persona stages, each with a rejects table beside it."""

from persona_hub_dagster.defs.stages import llm_stage_asset
from persona_hub_dagster.lib.personas import persona_to_persona, text_to_persona

text_to_persona_asset = llm_stage_asset(text_to_persona.STAGE, group="personas")
persona_to_persona_asset = llm_stage_asset(persona_to_persona.STAGE, group="personas")

"""synthetic/<task>: one asset (and its rejects table) per entry of the task registry, built by the stage factory."""

from persona_hub_dagster.defs.stages import llm_stage_asset
from persona_hub_dagster.lib.synthesis import generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS

synthesis_assets = [llm_stage_asset(generate.stage(task), group="synthesis") for task in TASKS.values()]

"""synthetic/<task>: one asset (and its rejects table) per entry of the task registry, and `demonstrations`, the
personas of the few-shot pools; all built by the stage factory."""

from persona_hub_dagster.defs.stages import stage_asset
from persona_hub_dagster.lib.synthesis import demonstrations, generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS

demonstrations_asset = stage_asset(demonstrations.STAGE, group="synthesis")
synthesis_assets = [stage_asset(generate.stage(task), group="synthesis") for task in TASKS.values()]

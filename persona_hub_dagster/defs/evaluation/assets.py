"""eval/<task>: every evaluation each synthesis task declares (agreement for math and reasoning, the sandbox for
tools, an LLM judge for the rest), built by the stage factory from the evaluation registry."""

from persona_hub_dagster.defs.stages import stage_asset
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS, RUNS_PROGRAMS

# Evaluations that run model-written Python in the sandbox say so on their main table.
evaluation_assets = [
    stage_asset(stage, group="evaluation", kinds=["python"] if name in RUNS_PROGRAMS else [])
    for name, stage in EVALUATIONS.items()
]

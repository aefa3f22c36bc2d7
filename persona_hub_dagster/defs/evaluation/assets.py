"""eval/<task>: one evaluation per synthesis task (agreement for math and reasoning, the sandbox for tools, an LLM
judge for the rest), built by the stage factory from the evaluation registry."""

from persona_hub_dagster.defs.stages import llm_stage_asset
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS

# Evaluations that run model-written Python in the sandbox say so on their main table.
RUNS_PYTHON = {"math", "tools"}

evaluation_assets = [
    llm_stage_asset(stage, group="evaluation", kinds=["python"] if task in RUNS_PYTHON else [])
    for task, stage in EVALUATIONS.items()
]

"""The evaluation registry: one evaluation stage per synthesis task (`eval/<task>`), mirroring the task registry.
A new task's evaluation is one entry here: a judge rubric (judge.RUBRICS), or a stage of its own."""

from __future__ import annotations

from persona_hub_dagster.lib.evaluation import judge, math_eval, reasoning_eval, tools_eval
from persona_hub_dagster.lib.generation import LLMStage
from persona_hub_dagster.lib.synthesis.tasks import TASKS

EVALUATIONS: dict[str, LLMStage] = {
    "math": math_eval.STAGE,
    "reasoning": reasoning_eval.STAGE,
    "tools": tools_eval.STAGE,
    **{task: judge.stage(rubric) for task, rubric in judge.RUBRICS.items()},
}

_missing = sorted(set(TASKS) - set(EVALUATIONS))
if _missing:
    raise RuntimeError(f"Synthesis tasks without an evaluation: {_missing}; add one to lib/evaluation/registry.py")

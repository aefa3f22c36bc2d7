"""The tasks' small settings, the size of the demo and the tests: every task's `small` and its evaluations'
`small`, by op, and the derived personas of the pools the small settings show (persona_few_shot).

A stage settings file (the demo's, persona_hub_dagster/data/demo_settings.yaml) takes them all with
`synthesis_tasks: small` (lib/settings.py).
"""

from __future__ import annotations

from typing import Any

from persona_hub_dagster.lib.evaluation.registry import evaluation_stages
from persona_hub_dagster.lib.synthesis import demonstrations, generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS


def small_stage_settings() -> dict[str, dict[str, Any]]:
    """{op: settings}: every task's synthesis and evaluation stages at their declared small size, and the
    `demonstrations` stage deriving the personas of exactly the pools those settings show with their personas."""
    ops: dict[str, dict[str, Any]] = {}
    for task in TASKS.values():
        ops[generate.stage(task).op] = dict(task.small or {})
        for stage, evaluation in zip(evaluation_stages(task).values(), task.evaluations, strict=True):
            if evaluation.small:
                ops[stage.op] = dict(evaluation.small)
    shown = [name for name, task in TASKS.items() if (task.small or {}).get("prompting") == "persona_few_shot"]
    ops[demonstrations.STAGE.op] = {"tasks": shown}
    return ops

"""The synthesis tasks: the paper's six use cases (math counts for two: math and logical reasoning), one module per
task. Each module is named for its task and exports its declaration as `TASK` (lib/synthesis/steps.py: the steps and
their validators, the evaluation, the release, the small settings); common.py holds what several share.

`TASKS` is the registry, found by listing this package: the asset factory builds `synthetic/<task>`, `eval/<task>`
and `release/<task>` from it, and the CLI, the demo's settings and the tests take their task lists from it. A new
task is a module here, its template(s) in lib/prompts/ (and a judge template when a rubric evaluates it) and a
demonstration pool in data/demonstrations/ (docs/how-to/add-a-task.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

# The registry's order: the paper's tasks first, as they always were (the default task list of the `demonstrations`
# stage follows it, and so does its code version), then any other task by name.
PAPER_ORDER = ("math", "reasoning", "instructions", "conversations", "knowledge", "npc", "tools")
HELPER_MODULES = frozenset({"common"})


def _discover() -> dict[str, SynthesisTask]:
    found: dict[str, SynthesisTask] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in HELPER_MODULES or module.name.startswith("_"):
            continue
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if not isinstance(task, SynthesisTask):
            raise TypeError(
                f"lib/synthesis/tasks/{module.name}.py exports no TASK: every module there but "
                f"{', '.join(sorted(HELPER_MODULES))} declares one task (TASK = SynthesisTask(...))"
            )
        if task.name != module.name:
            raise ValueError(f"lib/synthesis/tasks/{module.name}.py declares task {task.name!r}: name it for its task")
        found[task.name] = task
    ranked = sorted(
        found, key=lambda name: (PAPER_ORDER.index(name) if name in PAPER_ORDER else len(PAPER_ORDER), name)
    )
    return {name: found[name] for name in ranked}


TASKS: dict[str, SynthesisTask] = _discover()

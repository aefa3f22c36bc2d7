"""The evaluation registry, derived from the task registry: every evaluation each task declares, as a stage.

A task's first evaluation writes eval/<task>, any further one eval/<task>_<name> (`SynthesisTask.evaluation_names`);
EVALUATIONS is keyed by that name. A judged evaluation's stage is built from its rubric (judge.stage), any other by
the function the task names (e.g. math_eval.stage).
"""

from __future__ import annotations

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.evaluation import judge
from persona_hub_dagster.lib.stage import Stage
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks import TASKS


def evaluation_stages(task: SynthesisTask) -> dict[str, Stage]:
    """{eval name: its stage} for one task; an evaluation whose stage writes another table than its name is an error."""
    if not task.evaluations:
        raise RuntimeError(f"Task {task.name!r} declares no evaluation (lib/synthesis/tasks/{task.name}.py)")
    stages: dict[str, Stage] = {}
    for name, evaluation in zip(task.evaluation_names(), task.evaluations, strict=True):
        stage = judge.stage(task, evaluation.rubric, name) if evaluation.rubric else evaluation.stage(task)
        expected = tables.evaluation(name, "").table
        if stage.table != expected:
            raise RuntimeError(
                f"Task {task.name!r}: its evaluation {name!r} writes {stage.table.name}, not {expected.name}"
            )
        stages[name] = stage
    return stages


EVALUATIONS: dict[str, Stage] = {
    name: stage for task in TASKS.values() for name, stage in evaluation_stages(task).items()
}
# Evaluations that run model-written programs (in the sandbox).
RUNS_PROGRAMS = frozenset(
    name
    for task in TASKS.values()
    for name, evaluation in zip(task.evaluation_names(), task.evaluations, strict=True)
    if evaluation.runs_programs
)
_written = [table for stage in EVALUATIONS.values() for table in stage.writes.tables]
_clashes = sorted({table.name for table in _written if _written.count(table) > 1})
if _clashes:
    raise RuntimeError(f"Two evaluations write {', '.join(_clashes)}: rename one (Evaluation(name=...))")

"""The task is the unit: every task module declares every piece the platform needs from a task (a missing one
fails here, with a checklist of what to add), and the registries of evaluations, releases and small settings are
derived from the declarations."""

from __future__ import annotations

from importlib import resources

import polars as pl
import pytest

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.evaluation import judge, tools_eval
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS, RUNS_PROGRAMS, evaluation_stages
from persona_hub_dagster.lib.settings import read_stage_settings, settings_from
from persona_hub_dagster.lib.synthesis import demonstrations, generate
from persona_hub_dagster.lib.synthesis.small import small_stage_settings
from persona_hub_dagster.lib.synthesis.steps import Evaluation, Step, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster.lib.synthesis.tasks.instructions import instruction

DEMO_SETTINGS = resources.files("persona_hub_dagster") / "data" / "demo_settings.yaml"
HOW_TO = "docs/how-to/add-a-task.md"


def missing_pieces(task: SynthesisTask) -> list[str]:
    """What `task` lacks of a complete task, each item saying what to add and where (empty: nothing)."""
    missing = []
    module = f"lib/synthesis/tasks/{task.name}.py"
    if not task.evaluations:
        missing.append(
            f"an evaluation in {module}: evaluations=(Evaluation(rubric=Rubric('judge_{task.name}', criteria, show), "
            f"small=...),) with its judge prompt lib/prompts/judge_{task.name}.v1.jinja, or Evaluation(stage=...) "
            "of its own"
        )
    else:
        try:
            stages = evaluation_stages(task)
        except Exception as error:  # noqa: BLE001 (the checklist reports any failure)
            missing.append(f"an evaluation that builds its stage: {error}")
        else:
            for stage, evaluation in zip(stages.values(), task.evaluations, strict=True):
                try:
                    settings_from(stage.settings, evaluation.small)
                except (TypeError, ValueError) as error:
                    missing.append(f"valid small settings of {stage.op} (Evaluation(small=...)): {error}")
    pool = resources.files("persona_hub_dagster") / "data" / "demonstrations" / f"{task.name}.jsonl"
    if not pool.is_file():
        missing.append(
            f"a demonstration pool: persona_hub_dagster/data/demonstrations/{task.name}.jsonl (one answer of the "
            f"first step per line, its fields as in the answer schema)"
        )
    elif task.name in TASKS and not demonstrations.load_pool(task).demonstrations:
        missing.append(f"demonstrations in persona_hub_dagster/data/demonstrations/{task.name}.jsonl (it is empty)")
    if task.release is None:
        missing.append(f"a release spec in {module}: release=ReleaseSpec(chat=<a row as chat messages>, ...)")
    if task.small is None:
        missing.append(f"small settings in {module}: small={{'personas': 2, ...}} (the demo's and the tests' size)")
    else:
        try:
            settings_from(task.settings, task.small)
        except (TypeError, ValueError) as error:
            missing.append(f"valid small settings in {module}: {error}")
    return missing


def checklist(missing: dict[str, list[str]]) -> str:
    lines = [f"A task lacks a piece (see {HOW_TO}):"]
    for name, pieces in missing.items():
        lines += [f"  {name}:", *(f"    [ ] {piece}" for piece in pieces)]
    return "\n".join(lines)


def test_every_task_has_every_piece():
    missing = {name: pieces for name, task in TASKS.items() if (pieces := missing_pieces(task))}
    assert not missing, checklist(missing)


def test_an_incomplete_task_gets_the_checklist():
    step = Step("instruction", "instruction", instruction, {"type": "object"})
    incomplete = SynthesisTask("postcards", "Postcards.", (step,), {"instruction": pl.String})
    message = checklist({"postcards": missing_pieces(incomplete)})
    for piece in ("an evaluation", "a demonstration pool", "a release spec", "small settings"):
        assert f"[ ] {piece}" in message, message
    assert "lib/prompts/judge_postcards.v1.jinja" in message and "data/demonstrations/postcards.jsonl" in message


def test_the_registries_are_derived_from_the_tasks():
    assert list(EVALUATIONS) == [name for task in TASKS.values() for name in task.evaluation_names()]
    assert {name for name, task in TASKS.items() if task.runs_programs} == RUNS_PROGRAMS == {"math", "tools"}
    for name, task in TASKS.items():
        assert EVALUATIONS[name].table.path == ("eval", name)  # the first evaluation keeps eval/<task>
        assert task.release is not None and task.release.categories


def test_the_demo_settings_are_the_tasks_small_settings():
    demo = read_stage_settings(str(DEMO_SETTINGS))
    small = small_stage_settings()
    assert {op: demo[op] for op in small} == small
    for task in TASKS.values():
        assert demo[generate.stage(task).op] == dict(task.small)
    shown = [name for name, task in TASKS.items() if task.small.get("prompting") == "persona_few_shot"]
    assert demo[demonstrations.STAGE.op]["tasks"] == shown


def test_a_settings_file_entry_applies_over_the_small_settings(tmp_path):
    path = tmp_path / "stages.yaml"
    path.write_text("synthesis_tasks: small\nsynthesize_math: {personas: 3, prompting: few_shot}\n")
    assert read_stage_settings(str(path))["synthesize_math"] == {
        **TASKS["math"].small,
        "personas": 3,
        "prompting": "few_shot",
    }
    path.write_text("synthesis_tasks: big\n")
    with pytest.raises(ValueError, match="synthesis_tasks takes 'small'"):
        read_stage_settings(str(path))


def rubric(template: str = "judge_instructions") -> judge.Rubric:
    return judge.Rubric(template, ("specific", "answerable", "in_voice"), lambda row: {"item": row["instruction"]})


def postcards(*evaluations: Evaluation) -> SynthesisTask:
    step = Step("instruction", "instruction", instruction, {"type": "object"})
    return SynthesisTask("postcards", "Postcards.", (step,), {"instruction": pl.String}, evaluations=evaluations)


def test_a_task_may_declare_several_evaluations_each_with_its_own_table():
    stages = evaluation_stages(postcards(Evaluation(rubric=rubric()), Evaluation(rubric=rubric(), name="style")))
    assert {name: stage.table.path for name, stage in stages.items()} == {
        "postcards": ("eval", "postcards"),
        "postcards_style": ("eval", "postcards_style"),
    }
    assert [stage.op for stage in stages.values()] == ["evaluate_postcards", "evaluate_postcards_style"]


def test_an_ambiguous_evaluation_is_an_error_never_resolved_silently():
    with pytest.raises(ValueError, match="not both"):
        Evaluation(rubric=rubric(), stage=tools_eval.stage)
    with pytest.raises(ValueError, match="neither"):
        Evaluation()
    with pytest.raises(ValueError, match="every further one needs a name"):
        postcards(Evaluation(rubric=rubric()), Evaluation(rubric=rubric()))
    with pytest.raises(RuntimeError, match="writes eval/tools, not eval/postcards"):
        evaluation_stages(postcards(Evaluation(stage=tools_eval.stage)))


def test_a_rubric_declares_its_template_inputs():
    with pytest.raises(ValueError, match=r"reads \['world'\], which the rubric does not pass"):
        judge.Rubric("judge_npc", ("world_consistent", "self_consistent", "playable"), lambda row: {})
    assert TASKS["npc"].evaluations[0].rubric.inputs == ("item", "world")
    assert prompts.load("judge_npc").variables <= {"persona", "item", "world"}

"""math: challenging math problems grounded in a persona's work or interests (the problem only, no solution).

Evaluated by agreement of independent solutions, step-by-step and as programs run in the sandbox
(lib/evaluation/math_eval.py: eval/math and eval/math_solutions); the release pairs each problem with a verified
solution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisSettings, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import (
    LEAKED_ANSWER,
    Item,
    TaskContext,
    chat_turns,
    json_object,
    string,
    text,
)

# The paper's variants ("create a geometry problem", "an olympiad-level problem"); any other text is a topic.
MATH_FOCUS = {
    "any": "",
    "grade_school": "a grade-school word problem that takes a few steps of arithmetic",
    "geometry": "a geometry problem",
    "olympiad": "an olympiad-level competition problem",
}


@dataclass(frozen=True)
class MathSettings(SynthesisSettings):
    focus: str = setting(
        "any", f"The kind of problem: {', '.join(MATH_FOCUS)}, or free text (e.g. 'probability with dice')."
    )


def _math_context(settings: MathSettings) -> TaskContext:
    focus = MATH_FOCUS.get(settings.focus, f"a problem about {settings.focus.strip()}")
    return TaskContext(settings, inputs={"focus": focus}, row={"focus": settings.focus})


def math_problem(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    problem = text(answer, "problem")
    if len(problem) < 40:
        raise Rejected(f"too_short: a {len(problem)}-character problem cannot be challenging")
    if LEAKED_ANSWER.search(answer["problem"]):
        raise Rejected("contains_solution: the problem states its answer or solution")
    if not re.search(r"\d", problem):
        raise Rejected("no_numbers: the problem gives no quantities to compute with")
    return {"problem": problem}


def _evaluation(task: SynthesisTask):
    # Imported when the registry builds the stage: math_eval -> synthesis.generate -> demonstrations -> the registry.
    from persona_hub_dagster.lib.evaluation import math_eval

    return math_eval.stage(task)


def verified_solutions(store: DeltaStore) -> pl.DataFrame:
    """For each verified problem, a solution that reached the agreed answer: a step-by-step one when there is one."""
    if not store.exists(tables.EVAL_MATH_SOLUTIONS):
        return pl.DataFrame(schema={"item_id": pl.String, "shard": pl.String, "solution": pl.String})
    agreed = store.read(tables.EVAL_MATH).select("item_id", "shard", agreed=pl.col("answer"))
    solutions = (
        store.read(tables.EVAL_MATH_SOLUTIONS)
        .join(agreed, on=["item_id", "shard"])
        .filter(pl.col("answer") == pl.col("agreed"))
        .sort("item_id", pl.col("kind") != "reasoning", "solution_index")
        .unique(["item_id", "shard"], keep="first", maintain_order=True)
    )
    solution = (
        pl.when(pl.col("kind") == "reasoning")
        .then(pl.col("output") + pl.lit("\n\nAnswer: ") + pl.col("raw_answer"))
        .otherwise(pl.lit("```python\n") + pl.col("output") + pl.lit("\n```\n\nAnswer: ") + pl.col("answer"))
    )
    return solutions.select("item_id", "shard", solution=solution)


TASK = SynthesisTask(
    name="math",
    description="Challenging math problems grounded in a persona's work or interests (problem only, no solution).",
    steps=(Step("problem", "math_problem", math_problem, json_object(problem=string())),),
    columns={"problem": pl.String, "focus": pl.String},
    inputs=("persona", "focus"),
    settings=MathSettings,
    context=_math_context,
    text=lambda row: row["problem"],
    evaluations=(
        Evaluation(
            stage=_evaluation,
            runs_programs=True,
            small={
                "reasoning_solutions": 2,
                "program_solutions": 1,
                "min_agreement": 2,
                "reasoning_max_tokens": 256,
                "program_max_tokens": 192,
            },
        ),
    ),
    release=ReleaseSpec(
        # The problem and how it is solved: the verified solution joined from eval/math_solutions.
        chat=lambda row: chat_turns(("user", row["problem"]), ("assistant", row.get("solution"))),
        categories=("question-answering", "text-generation"),
        eval_columns=("answer",),
        joins=verified_solutions,
        joined_from=((tables.EVAL_MATH_SOLUTIONS, "solution"),),
    ),
    small={"personas": 8},
)

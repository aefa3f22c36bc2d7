"""reasoning: logical reasoning problems grounded in a persona, with the intended answer and a short justification
(variant `trick`: questions with a false premise or wordplay, as in Ruozhiba).

Evaluated by independent solutions compared with the intended answer (lib/evaluation/reasoning_eval.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisSettings, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import (
    LEAKED_ANSWER,
    Item,
    TaskContext,
    chat_turns,
    folded,
    json_object,
    string,
    text,
    words,
)

REASONING_VARIANTS = {
    "standard": (
        "a logical reasoning problem (deduction, constraints, scheduling, ordering, truth-tellers and liars, ...) "
        "set in the person's world, solvable by careful reasoning alone and with exactly one correct answer"
    ),
    "trick": (
        "a trick question in the style of Ruozhiba: it reads like an ordinary question but rests on a false "
        "premise, wordplay or a hidden absurdity that a careful reader must notice; the answer points that out"
    ),
}


@dataclass(frozen=True)
class ReasoningSettings(SynthesisSettings):
    variant: str = setting("standard", "standard: logic puzzles; trick: false premises and wordplay (Ruozhiba).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in REASONING_VARIANTS:
            raise ValueError(f"variant must be one of {list(REASONING_VARIANTS)}, not {self.variant!r}")


def reasoning_problem(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    question, solution, why = text(answer, "question"), text(answer, "answer"), text(answer, "justification")
    if len(question) < 30:
        raise Rejected(f"too_short: a {len(question)}-character question")
    if not solution or placeholder_echo(solution):
        raise Rejected("no_answer: the intended answer is empty")
    if len(why) < 10 or placeholder_echo(why):
        raise Rejected("no_justification: the answer comes without a justification")
    stated = words(solution) >= 4 and folded(solution).rstrip(".") in folded(question)
    if LEAKED_ANSWER.search(answer["question"]) or stated:
        raise Rejected("states_answer: the question gives its own answer away")
    return {"question": question, "answer": solution, "justification": why}


def _evaluation(task: SynthesisTask):
    # Imported when the registry builds the stage: reasoning_eval -> synthesis.generate -> the registry.
    from persona_hub_dagster.lib.evaluation import reasoning_eval

    return reasoning_eval.stage(task)


TASK = SynthesisTask(
    name="reasoning",
    description="Logical reasoning problems grounded in a persona, with the intended answer and a short "
    "justification in separate columns (variant `trick`: questions with a false premise or wordplay).",
    steps=(
        Step(
            "problem",
            "reasoning_problem",
            reasoning_problem,
            json_object(question=string(), answer=string(500), justification=string(1500)),
            sampling=SamplingParams(temperature=0.8, max_tokens=384),
        ),
    ),
    columns={"question": pl.String, "answer": pl.String, "justification": pl.String, "variant": pl.String},
    inputs=("persona", "variant"),
    settings=ReasoningSettings,
    context=lambda s: TaskContext(s, inputs={"variant": REASONING_VARIANTS[s.variant]}, row={"variant": s.variant}),
    pool_filter=lambda entry, settings: entry.get("variant", "standard") == settings.variant,
    text=lambda row: row["question"],
    evaluations=(Evaluation(stage=_evaluation, small={"solutions": 2, "min_agreement": 1, "max_tokens": 192}),),
    release=ReleaseSpec(
        chat=lambda row: chat_turns(
            ("user", row["question"]), ("assistant", f"{row['justification']}\n\nAnswer: {row['answer']}")
        ),
        categories=("question-answering", "text-generation"),
    ),
    small={"personas": 2, "prompting": "few_shot", "shots": 2},
)

"""instructions: requests a persona would make to an AI assistant, in the persona's voice (user prompts).

Judged against a rubric (specific, answerable, in the persona's voice); released as user turns, the responses left
to the trainer.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.evaluation.judge import Rubric
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import Item, TaskContext, chat_turns, json_object, string, text


def instruction(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    request = text(answer, "instruction")
    if len(request) < 15 or placeholder_echo(request):
        raise Rejected(f"too_short: a {len(request)}-character instruction")
    return {"instruction": request}


TASK = SynthesisTask(
    name="instructions",
    description="Requests a persona would make to an AI assistant, in the persona's voice (user prompts).",
    steps=(
        Step(
            "instruction",
            "instruction",
            instruction,
            json_object(instruction=string()),
            sampling=SamplingParams(temperature=0.8, max_tokens=160),
        ),
    ),
    columns={"instruction": pl.String},
    evaluations=(
        Evaluation(
            rubric=Rubric(
                "judge_instructions",
                ("specific", "answerable", "in_voice"),
                lambda row: {"item": prompts.delimited("instruction", row["instruction"])},
            ),
            small={"max_tokens": 96},
        ),
    ),
    # User prompts: the responses are the trainer's to make.
    release=ReleaseSpec(chat=lambda row: chat_turns(("user", row["instruction"]))),
    small={"personas": 4, "prompting": "persona_few_shot"},
)

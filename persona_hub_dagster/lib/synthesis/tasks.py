"""The synthesis tasks. A task is its prompt template, the JSON schema of the model's answer, a validator, and the
typed columns it adds to its rows; `TASKS` is the registry the asset factory builds `synthetic/<task>` from, so a
new task is one entry here plus a template file in lib/prompts/.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.generation import Rejected, normalize_description
from persona_hub_dagster.lib.llm.types import SamplingParams


@dataclass(frozen=True)
class SynthesisTask:
    name: str  # the asset is synthetic/<name>
    template: str  # lib/prompts/<template>.v<N>.jinja, rendered with `persona`
    answer_schema: Mapping[str, Any]  # what the model must answer (enforced by the backend where it can)
    columns: Mapping[str, pl.DataType]  # the task's typed fields in each row
    to_fields: Callable[[Mapping[str, Any]], dict[str, Any]]  # validated answer -> fields; raises Rejected
    description: str
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.8, max_tokens=320))

    def prompt(self) -> prompts.PromptTemplate:
        return prompts.load(self.template)

    @property
    def stage(self) -> tables.Stage:
        return tables.synthetic(
            self.name,
            f"{self.description} One row per item: item_id, the persona_id it was created for (joins persona_hub), "
            f"{', '.join(self.columns)}.",
        )


# A problem that gives its own answer away: "Solution:", "Answer: 42", "the answer is".
_LEAKED_ANSWER = re.compile(r"(?im)^\s*(solution|answer)\s*[:：]|\bthe (final )?answer is\b")


def _math_fields(answer: Mapping[str, Any]) -> dict[str, Any]:
    problem = normalize_description(answer["problem"])
    if len(problem) < 40:
        raise Rejected(f"too_short: a {len(problem)}-character problem cannot be challenging")
    if _LEAKED_ANSWER.search(answer["problem"]):
        raise Rejected("contains_solution: the problem states its answer or solution")
    if not re.search(r"\d", problem):
        raise Rejected("no_numbers: the problem gives no quantities to compute with")
    return {"problem": problem}


def _instruction_fields(answer: Mapping[str, Any]) -> dict[str, Any]:
    instruction = normalize_description(answer["instruction"])
    if len(instruction) < 15:
        raise Rejected(f"too_short: a {len(instruction)}-character instruction")
    return {"instruction": instruction}


def _object(**properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


MATH = SynthesisTask(
    name="math",
    template="math_problem",
    answer_schema=_object(problem={"type": "string", "minLength": 1, "maxLength": 2000}),
    columns={"problem": pl.String},
    to_fields=_math_fields,
    description="Challenging math problems grounded in a persona's work or interests (problem only, no solution).",
)

INSTRUCTIONS = SynthesisTask(
    name="instructions",
    template="instruction",
    answer_schema=_object(instruction={"type": "string", "minLength": 1, "maxLength": 2000}),
    columns={"instruction": pl.String},
    to_fields=_instruction_fields,
    description="Requests a persona would make to an AI assistant, in the persona's voice (user prompts).",
    sampling=SamplingParams(temperature=0.8, max_tokens=160),
)

TASKS: dict[str, SynthesisTask] = {task.name: task for task in (MATH, INSTRUCTIONS)}

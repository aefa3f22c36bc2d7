"""eval/reasoning: the math method applied to logic problems. Each question is solved independently `solutions`
times (each its own seed); each solver's answer is compared with the generator's intended answer (as numbers when
both are, else by content-word overlap), and an item passes when at least `min_agreement` solutions agree with it.
A trick question passes when the solvers see through it the way its intended answer does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.evaluation.answers import same_answer
from persona_hub_dagster.lib.evaluation.common import eval_lineage, finish, shard_items
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import (
    Planned,
    Provenance,
    Stage,
    StageCall,
    StageResult,
    chat_request,
    frame,
    rejects_frame,
    request_keys,
    run_requests,
)
from persona_hub_dagster.lib.synthesis.generate import TYPICAL_ANSWER_SHARE
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

TEMPLATE = "reasoning_solution"
SOLUTION_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 6000},
        "answer": {"type": "string", "minLength": 1, "maxLength": 500},
    },
    "required": ["reasoning", "answer"],
}
CHECKS = {
    "n_solutions": pl.Int32,
    "n_answered": pl.Int32,
    "agreeing": pl.Int32,  # solutions whose answer matches the intended one
    "answers": pl.List(pl.String),  # every solution's answer ("" when it gave none), in solution order
    "agrees_with_intended": pl.Boolean,  # agreeing >= min_agreement
}
SOLUTIONS_SCHEMA = {
    "item_id": pl.String,
    "shard": pl.String,
    "solution_index": pl.Int32,
    "reasoning": pl.String,
    "answer": pl.String,
    "agrees": pl.Boolean,
    "error": pl.String,  # a rejected output: why there is no answer
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class ReasoningEvalSettings:
    solutions: int = setting(3, "Independent solutions per question.")
    min_agreement: int = setting(2, "Solutions that must agree with the intended answer for the item to pass.")
    temperature: float = setting(0.7, "Sampling temperature of the solvers.")
    max_tokens: int = setting(384, "Output tokens per solution.")

    def __post_init__(self) -> None:
        if not 1 <= self.min_agreement <= self.solutions:
            raise ValueError(f"min_agreement must be between 1 and solutions ({self.solutions})")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)


def evaluate(items: pl.DataFrame, call: StageCall, settings: ReasoningEvalSettings):
    """(checks per item, every solution, rejected solver outputs)."""
    prompt = prompts.load(TEMPLATE)
    provenance = Provenance(
        tables.evaluation("reasoning", "").name, call.shard, call.run_id, call.client.backend.model, prompt.version
    )
    planned = []
    for item_id, question in items.select("item_id", "question").iter_rows():
        for index in range(settings.solutions):
            sampling = replace(settings.sampling, seed=settings.sampling.seed + index)
            request = chat_request(
                prompt,
                sampling=sampling,
                json_schema=SOLUTION_SCHEMA,
                request_id=f"{item_id}:{index}",
                problem=prompts.delimited("problem", question),
            )
            planned.append(Planned(item_id, request, {"item_id": item_id, "solution_index": index}))

    def parse(item: Planned, response):
        yield {"reasoning": response.parsed["reasoning"], "answer": " ".join(response.parsed["answer"].split())}

    output = run_requests(call.client, planned, parse, provenance, batch_size=call.batch_size)
    intended = dict(items.select("item_id", "answer").iter_rows())
    solutions: dict[tuple[str, int], dict[str, Any]] = {}
    for row in output.rows:
        agrees = same_answer(intended[row["item_id"]], row["answer"])
        solutions[(row["item_id"], row["solution_index"])] = {**row, "agrees": agrees, "error": None}
    for reject in output.rejects:
        keys = request_keys(reject)
        solutions[(keys["item_id"], keys["solution_index"])] = {
            **keys,
            **provenance.stamp(),
            "reasoning": reject["raw_output"],
            "answer": None,
            "agrees": False,
            "error": f"rejected: {reject['reason']}",
        }
    checks = []
    for item_id in items["item_id"]:
        mine = [solutions.get((item_id, i), {}) for i in range(settings.solutions)]
        agreeing = sum(1 for s in mine if s.get("agrees"))
        checks.append(
            {
                "item_id": item_id,
                "n_solutions": settings.solutions,
                "n_answered": sum(1 for s in mine if s.get("answer")),
                "agreeing": agreeing,
                "answers": [s.get("answer") or "" for s in mine],
                "agrees_with_intended": agreeing >= settings.min_agreement,
                "passed": agreeing >= settings.min_agreement,
            }
        )
    checks_frame = frame(checks, {"item_id": pl.String, **CHECKS, "passed": pl.Boolean})
    return checks_frame, list(solutions.values()), output.rejects


EVALUATION = tables.evaluation(
    "reasoning",
    "Each reasoning question solved independently several times; each answer compared with the generator's intended "
    "answer. `passed` when at least min_agreement solutions agree with it. Plus each item's near-duplicate, "
    "persona-grounding and contamination columns.",
    extra=(tables.EVAL_REASONING_SOLUTIONS,),
)


def stage(task: SynthesisTask) -> Stage:
    """eval/reasoning: the task's questions solved independently, each answer compared with the intended one."""

    def run(
        inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: ReasoningEvalSettings
    ) -> StageResult:
        items = shard_items(inputs, call, task)
        checks, solutions, rejects = evaluate(items, call, settings)
        stamp = {
            "model": call.client.backend.model,
            "prompt_version": prompts.load(TEMPLATE).version,
            "run_id": call.run_id,
        }
        rows, metadata = finish(task, items, checks, call, check_columns=["agrees_with_intended"], stamp=stamp)
        return StageResult(
            {
                EVALUATION.table: rows,
                EVALUATION.rejects: rejects_frame(rejects),
                tables.EVAL_REASONING_SOLUTIONS: frame(solutions, SOLUTIONS_SCHEMA).sort("item_id", "solution_index"),
            },
            metadata,
        )

    def estimate(settings: ReasoningEvalSettings, shard: Estimating) -> StageEstimate:
        items, calls, prompt = shard.items(task.table.name, settings.solutions, template=TEMPLATE)
        return shard.cost(
            EVALUATION.table.name,
            calls,
            prompt=prompt,
            completion=TYPICAL_ANSWER_SHARE * settings.max_tokens,
            max_tokens=settings.max_tokens,
            rows={EVALUATION.table.name: items},
        )

    return Stage(
        EVALUATION,
        op="evaluate_reasoning",
        settings=ReasoningEvalSettings,
        run=run,
        prompts=lambda settings: [prompts.load(TEMPLATE).version],
        samplings=lambda settings: [settings.sampling],
        version_extra=lambda settings: (settings.solutions, settings.min_agreement),
        reads=(task.table,),
        estimate=estimate,
        uses=(tables.PERSONA_HUB,),
        resources=("llm", "embeddings", "benchmarks"),
        lineage=eval_lineage(task),
    )

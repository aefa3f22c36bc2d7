"""LLM-judged evaluations (instructions, conversations, knowledge, npc): a versioned rubric per task (declared in
the task's module, lib/synthesis/tasks/), one 1-5 score per criterion and a one-line rationale, as structured
output; an item passes when every criterion meets the threshold. The judge is the `judge` resource: the
generator's model unless PERSONA_HUB_JUDGE_* names another.

A judge output that is not valid JSON for the rubric (after the client's retries) goes to `eval/<task>_rejects`
with its raw text; the item's row says `judged` false and does not pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.estimate import PERSONA_TOKENS, Estimating, StageEstimate
from persona_hub_dagster.lib.evaluation.common import eval_lineage, finish, shard_items
from persona_hub_dagster.lib.llm.types import LLMResponse, SamplingParams
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import (
    Planned,
    Provenance,
    Rejected,
    Stage,
    StageCall,
    StageResult,
    chat_request,
    frame,
    rejects_frame,
    run_requests,
)
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask


@dataclass(frozen=True)
class JudgeSettings:
    threshold: int = setting(3, "An item passes when every criterion scores at least this (1-5).")
    temperature: float = setting(0.2, "The judge's sampling temperature.")
    max_tokens: int = setting(160, "Output tokens per judgment (scores and a one-line rationale).")

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= 5:
            raise ValueError("threshold must be between 1 and 5")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)


@dataclass(frozen=True)
class Rubric:
    """A task's judge: declared in the task's module (`Evaluation(rubric=Rubric(...))`)."""

    template: str  # lib/prompts/judge_<task>.v<N>.jinja: the criteria, described, and the answer format
    criteria: tuple[str, ...]  # the scores it asks for, in order (each a column `score_<criterion>`)
    show: Callable[[Mapping[str, Any]], dict[str, str]]  # an item row -> the template's inputs besides `persona`
    inputs: tuple[str, ...] = ("item",)  # what `show` returns: the template's inputs besides `persona`

    def __post_init__(self) -> None:
        source, variables = self.prompt().source, self.prompt().variables
        missing = [c for c in self.criteria if f"- {c}:" not in source]
        if missing:
            raise ValueError(f"Rubric template {self.template} does not describe {missing}")
        unknown = sorted(variables - {"persona", *self.inputs})
        if unknown:
            raise ValueError(f"Rubric template {self.template} reads {unknown}, which the rubric does not pass")

    def prompt(self) -> prompts.PromptTemplate:
        return prompts.load(self.template)

    def schema(self) -> dict[str, Any]:
        scores = {c: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for c in self.criteria}
        return {
            "type": "object",
            "properties": {**scores, "rationale": {"type": "string", "minLength": 1, "maxLength": 400}},
            "required": [*self.criteria, "rationale"],
            "additionalProperties": False,
        }

    def checks(self) -> dict[str, pl.DataType]:
        return {
            "judged": pl.Boolean,  # the judge answered in the rubric's format
            "meets_threshold": pl.Boolean,  # every criterion >= threshold
            **{f"score_{c}": pl.Int8 for c in self.criteria},
            "min_score": pl.Int8,
            "rationale": pl.String,
        }


def judge_items(
    rubric: Rubric, name: str, items: pl.DataFrame, call: StageCall, settings: JudgeSettings
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """(one checks row per item of eval/<name>, the rejected judge outputs)."""
    prompt = rubric.prompt()
    provenance = Provenance(f"eval/{name}", call.shard, call.run_id, call.client.backend.model, prompt.version)
    planned = [
        Planned(
            row["item_id"],
            chat_request(
                prompt,
                sampling=settings.sampling,
                json_schema=rubric.schema(),
                request_id=row["item_id"],
                persona=prompts.delimited("persona", row["persona"] or ""),
                **rubric.show(row),
            ),
            {"item_id": row["item_id"]},
        )
        for row in items.iter_rows(named=True)
    ]

    def parse(item: Planned, response: LLMResponse):
        rationale = " ".join(str(response.parsed["rationale"]).split())
        if placeholder_echo(rationale) or len(rationale) < 3:
            raise Rejected("placeholder_echo: the judge gave no rationale, so its scores are not a judgment")
        scores = {c: int(response.parsed[c]) for c in rubric.criteria}
        lowest = min(scores.values())
        yield {
            "judged": True,
            "meets_threshold": lowest >= settings.threshold,
            **{f"score_{c}": s for c, s in scores.items()},
            "min_score": lowest,
            "rationale": rationale,
        }

    output = run_requests(call.client, planned, parse, provenance, batch_size=call.batch_size)
    judged = frame(output.rows, {"item_id": pl.String, **rubric.checks()})
    checks = (
        items.select("item_id")
        .join(judged, on="item_id", how="left")
        .with_columns(
            pl.col("judged").fill_null(False),
            pl.col("meets_threshold").fill_null(False),
        )
        .with_columns(passed=pl.col("judged") & pl.col("meets_threshold"))
    )
    return checks, output.rejects


TYPICAL_JUDGMENT_TOKENS = 70  # three scores and a one-line rationale as JSON


def stage(task: SynthesisTask, rubric: Rubric, name: str) -> Stage:
    """eval/<name> (the task's own name for its first evaluation): the task's items judged against the rubric."""

    def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: JudgeSettings) -> StageResult:
        items = shard_items(inputs, call, task)
        checks, rejects = judge_items(rubric, name, items, call, settings)
        stamp = {"model": call.client.backend.model, "prompt_version": rubric.prompt().version, "run_id": call.run_id}
        rows, metadata = finish(task, items, checks, call, check_columns=["judged", "meets_threshold"], stamp=stamp)
        scored = rows.filter(pl.col("judged"))
        metadata["mean_scores"] = {
            c: round(float(scored[f"score_{c}"].mean()), 3) if scored.height else None for c in rubric.criteria
        }
        metadata["score_distribution"] = {
            c: {str(s): int((scored[f"score_{c}"] == s).sum()) for s in range(1, 6)} for c in rubric.criteria
        }
        return StageResult({evaluated.table: rows, evaluated.rejects: rejects_frame(rejects)}, metadata)

    evaluated = tables.evaluation(
        name,
        f"synthetic/{task.name} judged by the `judge` model against a versioned rubric ({', '.join(rubric.criteria)}; "
        "1-5 each, with a one-line rationale); `passed` when every criterion meets the threshold. Plus each item's "
        "near-duplicate, persona-grounding and contamination columns.",
    )

    def estimate(settings: JudgeSettings, shard: Estimating) -> StageEstimate:
        """One judgment per item, the persona beside it."""
        template = rubric.prompt().name
        items, calls, prompt = shard.items(task.table.name, 1, template=template, extra=PERSONA_TOKENS)
        return shard.cost(
            evaluated.table.name,
            calls,
            prompt=prompt,
            completion=TYPICAL_JUDGMENT_TOKENS,
            max_tokens=settings.max_tokens,
            rows={evaluated.table.name: items},
        )

    return Stage(
        evaluated,
        op=f"evaluate_{name}",
        settings=JudgeSettings,
        run=run,
        prompts=lambda settings: [rubric.prompt().version],
        samplings=lambda settings: [settings.sampling],
        version_extra=lambda settings: (settings.threshold, rubric.criteria),
        reads=(task.table,),
        uses=(tables.PERSONA_HUB,),
        resources=("judge", "embeddings", "benchmarks"),
        estimate=estimate,
        lineage=eval_lineage(task),
    )

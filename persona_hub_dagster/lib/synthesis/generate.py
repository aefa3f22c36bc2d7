"""Generating a task's items for one shard: personas sampled from the shard's hub, one request per (persona,
sample), answers validated into typed rows, the rest kept as rejections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.generation import (
    LLMStage,
    Planned,
    StageCall,
    StageOutput,
    StageResult,
    StageRun,
    chat_request,
    frame,
    rate,
    rejects_frame,
    run_requests,
    stable_rank,
)
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMResponse
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.synthesis.tasks import SynthesisTask

BASE_COLUMNS = {"item_id": pl.String, "persona_id": pl.String, "shard": pl.String, "sample": pl.Int32}
STAMP_COLUMNS = {"model": pl.String, "prompt_version": pl.String, "run_id": pl.String}


@dataclass(frozen=True)
class SynthesisSettings:
    personas: int | None = setting(200, "Hub personas sampled from the shard; null: every one of them.")
    samples_per_persona: int = setting(1, "Items asked per persona, each with its own seed.")
    seed: int = setting(0, "Seeds the persona sample.")

    def __post_init__(self) -> None:
        if self.personas is not None and self.personas < 0 or self.samples_per_persona < 1:
            raise ValueError("personas must be >= 0 (or None) and samples_per_persona >= 1")


def output_schema(task: SynthesisTask) -> dict[str, pl.DataType]:
    return {**BASE_COLUMNS, **task.columns, **STAMP_COLUMNS}


def sample_personas(hub: pl.DataFrame, settings: SynthesisSettings) -> pl.DataFrame:
    """A deterministic sample of the shard's hub personas (the same on every machine for the same seed)."""
    hub = hub.select("persona_id", "persona").unique("persona_id", keep="first")
    ranked = hub.with_columns(
        rank=pl.Series([stable_rank(settings.seed, p) for p in hub["persona_id"]], dtype=pl.String)
    )
    ranked = ranked.sort("rank")
    if settings.personas is not None:
        ranked = ranked.head(settings.personas)
    return ranked.drop("rank")


def plan(task: SynthesisTask, personas: pl.DataFrame, settings: SynthesisSettings) -> list[Planned]:
    prompt = task.prompt()
    planned = []
    for pid, persona in personas.iter_rows():
        for sample in range(settings.samples_per_persona):
            seed = None if task.sampling.seed is None else task.sampling.seed + sample
            request = chat_request(
                prompt,
                sampling=replace(task.sampling, seed=seed),
                json_schema=task.answer_schema,
                request_id=f"{pid}:{sample}",
                persona=prompts.delimited("persona", persona),
            )
            planned.append(Planned(pid, request, {"persona_id": pid, "sample": sample}))
    return planned


def synthesize(
    task: SynthesisTask,
    hub: pl.DataFrame,
    client: LLMClient,
    settings: SynthesisSettings,
    *,
    shard: str,
    run_id: str,
    batch_size: int = 32,
) -> StageOutput:
    run = StageRun(task.stage.name, shard, run_id, client.backend.model, task.prompt().version)

    def parse(item: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
        fields = task.to_fields(response.parsed)
        # The item's id is its content: the same persona asked again with the same answer is the same item.
        identity = "\x1f".join([task.name, item.keys["persona_id"], *(str(v) for v in fields.values())])
        yield {"item_id": content_id(identity), **fields}

    personas = sample_personas(hub, settings)
    return run_requests(client, plan(task, personas, settings), parse, run, batch_size=batch_size)


def stage(task: SynthesisTask) -> LLMStage:
    """synthetic/<task>: the task's items for a shard's hub personas."""

    def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: SynthesisSettings) -> StageResult:
        hub = inputs[tables.PERSONA_HUB].select("persona_id", "persona").collect()
        output = synthesize(
            task, hub, call.client, settings, shard=call.shard, run_id=call.run_id, batch_size=call.batch_size
        )
        return StageResult(
            {
                task.stage.table: frame(output.rows, output_schema(task)),
                task.stage.rejects: rejects_frame(output.rejects),
            },
            {
                "hub_personas": hub.height,
                "rejection_rate": rate(len(output.rejects), len(output.rows) + len(output.rejects)),
            },
        )

    return LLMStage(
        task.stage,
        op=f"synthesize_{task.name}",
        settings=SynthesisSettings,
        run=run,
        prompts=lambda settings: [task.prompt().version],
        samplings=lambda settings: [task.sampling],
        version_extra=lambda settings: (sorted(task.columns),),
        reads=(tables.PERSONA_HUB,),
    )

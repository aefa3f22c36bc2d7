"""The engine every synthesis task runs on: a shard's hub personas in, the task's items (or rejections) out.

Per shard: personas are sampled from the hub; each (persona, sample) is an item; the task's steps run in order,
`rounds` times (a conversation's turns), each step one batch of requests over the items still alive (so every turn
or step is its own cached call and a killed run resumes mid-task). A step's answer is validated into fields; a
rejected answer ends its item, and is kept with its raw text, the step and the earlier steps' fields.

An item's id is the hash of everything that makes it: the task, the prompting mode, the steps' prompt versions, the
context version (the task's context inputs, and the demonstration pool and derived personas where the mode uses
them), the persona and the content. The stage's code version holds the same for the default settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.coverage import selection
from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMRequest, LLMResponse
from persona_hub_dagster.lib.stage import (
    Planned,
    Provenance,
    Rejected,
    RowsAndRejects,
    Stage,
    StageCall,
    StageResult,
    frame,
    rate,
    rejects_frame,
    run_requests,
    same_columns,
)
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis import demonstrations
from persona_hub_dagster.lib.synthesis.steps import Item, Step, SynthesisSettings, SynthesisTask, TaskContext

BASE_COLUMNS = {
    "item_id": pl.String,
    "persona_id": pl.String,
    "shard": pl.String,
    "persona_cluster": pl.Int32,  # the persona's cluster on the coverage map when it was drawn (null: none)
    "sample": pl.Int32,
    "prompting": pl.String,
    "demonstration_ids": pl.List(pl.String),  # what the prompt showed (empty in zero-shot mode)
    "context_version": pl.String,
}
STAMP_COLUMNS = {"model": pl.String, "prompt_version": pl.String, "run_id": pl.String}


def output_schema(task: SynthesisTask) -> dict[str, pl.DataType]:
    return {**BASE_COLUMNS, **task.columns, **STAMP_COLUMNS}


@dataclass(frozen=True)
class Prepared:
    """A task readied for one run: its context, the demonstrations the mode draws from, and the context version."""

    task: SynthesisTask
    settings: SynthesisSettings
    context: TaskContext
    pool: list[demonstrations.Demonstration]

    @property
    def context_version(self) -> str:
        uses_pool = self.settings.prompting != "zero_shot"
        parts = {
            "context": self.context.version,
            "prompting": self.settings.prompting,
            "shots": self.settings.shots if uses_pool else None,
            "pool": [(d.id, d.persona) for d in self.pool] if uses_pool else None,
        }
        return content_id(json.dumps(parts, sort_keys=True))[:12]


def prepare(task: SynthesisTask, settings: SynthesisSettings, store: DeltaStore | None = None) -> Prepared:
    """`store` is needed for persona_few_shot (the derived personas live in the demonstrations table)."""
    pool: list[demonstrations.Demonstration] = []
    if settings.prompting != "zero_shot":
        loaded = demonstrations.load_pool(task)
        pool = loaded.for_settings(task, settings)
        if settings.prompting == "persona_few_shot":
            if store is None:
                raise demonstrations.DemonstrationError("persona_few_shot needs the storage root")
            pool = demonstrations.with_personas(pool, demonstrations.derived_personas(store, loaded))
        if not pool:
            raise demonstrations.DemonstrationError(f"No {task.name} demonstrations fit these settings ({loaded.uri})")
    return Prepared(task, settings, task.context(settings), pool)


def draw_personas(
    hub: pl.DataFrame,
    settings: SynthesisSettings,
    store: DeltaStore | None = None,
    shard: str | None = None,
    embedder: Any = None,
) -> selection.Drawn:
    """The shard's hub personas the settings draw (lib/coverage/selection.py): aimed by query, clusters and filters,
    spread evenly across the shard's clusters (persona_clusters) or uniformly; deterministic for the seed."""
    clusters = shard_clusters(store, shard) if store is not None and shard is not None else None
    similarity = None
    if settings.query:
        if store is None or shard is None or embedder is None:
            raise ValueError("a query needs the shard's stored hub and an embedding model")
        from persona_hub_dagster.lib.coverage.persona_clusters import vectors_for

        vectors, has_vector = vectors_for(store, shard, hub, embedder)
        similarity = np.full(hub.height, np.nan, dtype=np.float32)
        if len(vectors):
            similarity[has_vector] = vectors @ embedder.encode([settings.query])[0]
    aim = selection.aim_of(settings)
    if settings.query and settings.min_similarity is None:
        aim = replace(aim, min_similarity=embedder.query_threshold)
    return selection.draw(hub, aim, clusters, similarity)


def shard_clusters(store: DeltaStore, shard: str) -> pl.DataFrame | None:
    """The shard's persona_clusters rows, or None where the shard has none."""
    if not store.exists(tables.PERSONA_CLUSTERS):
        return None
    rows = store.scan(tables.PERSONA_CLUSTERS, [shard])
    wanted = [c for c in ("persona_id", "cluster", "cluster_label", "region") if c in rows.collect_schema().names()]
    rows = rows.select(wanted).collect()
    return rows if rows.height else None


def items_for(prepared: Prepared, personas: pl.DataFrame) -> list[Item]:
    settings = prepared.settings
    return [
        Item(
            pid,
            persona,
            sample,
            demonstrations.choose(prepared.pool, settings.shots, seed=settings.seed, persona_id=pid, sample=sample)
            if prepared.pool
            else [],
            cluster=cluster,
        )
        for pid, persona, cluster in personas.select(
            "persona_id", "persona", pl.col("cluster") if "cluster" in personas.columns else pl.lit(None)
        ).iter_rows()
        for sample in range(settings.samples_per_persona)
    ]


def request(prepared: Prepared, step_index: int, round_number: int, item: Item) -> LLMRequest:
    """The request of one step for one item: the template rendered with the persona, the task's context inputs,
    the examples (first step, first round), the round and the fields the step reads."""
    task, settings = prepared.task, prepared.settings
    step = task.steps[step_index]
    shows_examples = step_index == 0 and round_number == 1
    variables: dict[str, object] = {
        **prepared.context.inputs,
        "persona": prompts.delimited("persona", item.persona),
        "examples": demonstrations.render(
            item.demonstrations if shows_examples else [], with_personas=settings.prompting == "persona_few_shot"
        ),
        "round": round_number,
        **{name: _shown(name, item.fields.get(name)) for name in step.reads},
    }
    sampling = step.sampling_for(settings)
    if sampling.seed is not None:  # each sample its own seed, each round too
        sampling = replace(sampling, seed=sampling.seed + item.sample + 1000 * (round_number - 1))
    request_id = f"{item.persona_id}:{item.sample}:{step.name}:{round_number}"
    blocks = step.prompt().render_blocks(**variables)
    if step.chat:
        system = [{"role": "system", "content": blocks["system"]}] if blocks.get("system") else []
        # The earlier turns are content too (model-written, from web text): no control token may open a turn.
        earlier = [{**m, "content": prompts.as_content(m["content"])} for m in item.fields.get("messages", [])]
        messages = tuple(system + earlier)
        return LLMRequest(messages, sampling, step.schema(prepared.context), request_id)
    if not blocks.get("user"):
        raise ValueError(f"Template {step.prompt().version} has no `user` block")
    return LLMRequest.chat(
        blocks["user"],
        system=blocks.get("system") or None,
        sampling=sampling,
        json_schema=step.schema(prepared.context),
        request_id=request_id,
    )


def synthesize(
    task: SynthesisTask,
    hub: pl.DataFrame,
    client: LLMClient,
    settings: SynthesisSettings,
    *,
    shard: str,
    run_id: str,
    batch_size: int = 32,
    store: DeltaStore | None = None,
    drawn: selection.Drawn | None = None,
) -> RowsAndRejects:
    """The task's items for `hub`'s personas, as `drawn` (default: drawn from `hub` alone, without clusters)."""
    prepared = prepare(task, settings, store)
    provenance = Provenance(task.table.name, shard, run_id, client.backend.model, task.prompt_version())
    items = items_for(prepared, (drawn or draw_personas(hub, settings)).personas)
    alive = list(range(len(items)))
    output = RowsAndRejects()
    for round_number in range(1, task.rounds(settings) + 1):
        for step_index, step in enumerate(task.steps):
            planned = [
                Planned(
                    items[i].persona_id,
                    request(prepared, step_index, round_number, items[i]),
                    _request_keys(prepared, items[i], i, step, round_number),
                )
                for i in alive
            ]
            result = run_requests(client, planned, _parser(prepared, step, items), provenance, batch_size=batch_size)
            output.rejects.extend(result.rejects)
            for row in result.rows:
                items[row["item"]].fields.update(row["fields"])
            alive = [row["item"] for row in result.rows]
    context_version = prepared.context_version
    for i in alive:
        output.rows.append(_row(prepared, items[i], context_version, provenance))
    return output


def _parser(prepared: Prepared, step: Step, items: list[Item]):
    def parse(planned: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
        item = items[planned.keys["item"]]
        if step.schema(prepared.context) is None:
            if response.finish_reason == "length":
                raise Rejected("truncated: the output hit max_tokens")
            answer: Any = response.text or ""
        else:
            answer = response.parsed
        yield {"fields": step.parse(answer, item, prepared.context)}

    return parse


def _request_keys(prepared: Prepared, item: Item, index: int, step: Step, round_number: int) -> dict[str, Any]:
    """The ids a reject row keeps in its `request` column: which item, step and round, and what the earlier steps
    produced (a rejected tool implementation keeps its spec)."""
    keys = {
        "item": index,
        "persona_id": item.persona_id,
        "sample": item.sample,
        "step": step.name,
        "round": round_number,
        "prompting": prepared.settings.prompting,
        "demonstration_ids": [d.id for d in item.demonstrations],
    }
    if item.fields:
        keys["earlier"] = {k: v for k, v in item.fields.items() if k != "transcript"}
    return keys


def _row(prepared: Prepared, item: Item, context_version: str, provenance: Provenance) -> dict[str, Any]:
    task = prepared.task
    fields = {name: item.fields[name] for name in task.columns if name in item.fields}
    identity = "\x1f".join(
        [
            task.name,
            prepared.settings.prompting,
            provenance.prompt_version,
            context_version,
            item.persona_id,
            json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str),
        ]
    )
    return {
        "item_id": content_id(identity),
        "persona_id": item.persona_id,
        "persona_cluster": item.cluster,
        "sample": item.sample,
        "prompting": prepared.settings.prompting,
        "demonstration_ids": [d.id for d in item.demonstrations],
        "context_version": context_version,
        **prepared.context.row,
        **prepared.context.located,
        **fields,
        **provenance.stamp(),
    }


def _shown(name: str, value: Any) -> str:
    """An earlier step's field as a template shows it: delimited as data."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return prompts.delimited(name, text)


# The persona `persona-hub prompt` renders with, and the typical persona a synthesis estimate prices.
EXAMPLE_PERSONA = (
    "A harbour pilot in Rotterdam who guides container ships through fog, trains apprentices and keeps a logbook of "
    "every near miss."
)
# A typical answer's share of its step's max_tokens (the embedded model often writes to the limit).
TYPICAL_ANSWER_SHARE = 0.7


def example_requests(
    task: SynthesisTask, settings: SynthesisSettings, persona: str, store: DeltaStore | None = None
) -> tuple[list[tuple[str, LLMRequest]], str | None]:
    """What the task sends the model for one persona, every step of the first round (and the next round's first
    step), fully rendered, for review (`persona-hub prompt`). A pool demonstration stands in for the model's answer
    where a later step needs one. Returns the requests and a note (e.g. personas not derived yet)."""
    note = None
    try:
        prepared = prepare(task, settings, store)
    except demonstrations.DemonstrationError as exc:  # persona_few_shot before the demonstrations asset ran
        note = f"{exc}. Shown with a placeholder where each derived persona goes."
        few = prepare(task, replace(settings, prompting="few_shot"))
        placeholder = "(the persona the `demonstrations` asset derives from this example)"
        prepared = replace(few, settings=settings, pool=[replace(d, persona=placeholder) for d in few.pool])
    item = items_for(prepared, pl.DataFrame({"persona_id": ["example"], "persona": [persona]}))[0]
    stand_in = demonstrations.load_pool(task).for_settings(task, settings)[0].fields
    shown: list[tuple[str, LLMRequest]] = []
    rounds = task.rounds(settings)
    for round_number in range(1, min(rounds, 2) + 1):
        for index, step in enumerate(task.steps):
            turn = f", turn {round_number}" if rounds > 1 else ""
            label = f"step {index + 1}/{len(task.steps)}: {step.name}{turn}"
            shown.append((f"{label} ({step.prompt().version})", request(prepared, index, round_number, item)))
            last = index + 1 == len(task.steps) and round_number == rounds
            if round_number == 2 or last:
                return shown, note
            if not step.chat and index > 0:  # no stand-in for a later step's answer
                return shown, note
            answer = "(the assistant's answer)" if step.chat else stand_in
            item.fields.update(step.parse(answer, item, prepared.context))
    return shown, note


# ---------------------------------------------------------------------------------------------------- the stage


def stage(task: SynthesisTask) -> Stage:
    """synthetic/<task>: the task's items for a shard's hub personas."""

    def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: SynthesisSettings) -> StageResult:
        hub = inputs[tables.PERSONA_HUB].collect()
        drawn = draw_personas(hub, settings, call.store, call.shard, call.embedder)
        output = synthesize(
            task,
            hub,
            call.client,
            settings,
            shard=call.shard,
            run_id=call.run_id,
            batch_size=call.batch_size,
            store=call.store,
            drawn=drawn,
        )
        items = frame(output.rows, output_schema(task))
        planned = drawn.personas.height * settings.samples_per_persona
        return StageResult(
            {task.table: items, task.writes.rejects: rejects_frame(output.rejects)},
            {
                "hub_personas": hub.height,
                "persona_selection": drawn.composition(),
                "prompting": settings.prompting,
                "acceptance_rate": rate(items.height, planned),
                "rejection_rate": rate(len(output.rejects), items.height + len(output.rejects)),
                "rejections_by_step": _count_by_step(output.rejects),
            },
        )

    def version_extra(settings: SynthesisSettings) -> tuple:
        prepared = prepare(task, settings) if settings.prompting != "persona_few_shot" else None
        context = prepared.context_version if prepared else (settings.prompting, task.context(settings).version)
        return (sorted(task.columns), settings.prompting, context)

    def estimate(settings: SynthesisSettings, shard: Estimating) -> StageEstimate:
        """Every step of every round for each sampled persona; the prompts as `persona-hub prompt` renders them
        (the few-shot modes' demonstrations included), a conversation's later turns with the turns before them."""
        personas = shard.drawn_personas(settings)
        items, rounds = personas * settings.samples_per_persona, task.rounds(settings)
        shown, _ = example_requests(task, settings, EXAMPLE_PERSONA, shard.store)
        first_round = [shard.request_tokens(request) for _, request in shown[: len(task.steps)]]
        steps = [step.sampling_for(settings).max_tokens or 0 for step in task.steps]
        completion = sum(steps) * TYPICAL_ANSWER_SHARE / len(steps)
        # A later round's prompt carries the conversation so far: on average half the other rounds' exchanges more.
        growth = (rounds - 1) / 2 * len(task.steps) * completion
        return shard.cost(
            task.table.name,
            items * len(task.steps) * rounds,
            prompt=sum(first_round) / max(len(first_round), 1) + growth,
            completion=completion,
            max_tokens=max(steps) or None,
            rows={task.table.name: items},
        )

    return Stage(
        task.writes,
        op=f"synthesize_{task.name}",
        settings=task.settings,
        run=run,
        prompts=lambda settings: task.prompt_version().split(","),
        samplings=lambda settings: [step.sampling_for(settings) for step in task.steps],
        version_extra=version_extra,
        reads=(tables.PERSONA_HUB,),
        uses=(tables.PERSONA_CLUSTERS, tables.DEMONSTRATION_PERSONAS),
        resources=("llm", "embeddings"),
        estimate=estimate,
        lineage={
            **same_columns(tables.PERSONA_HUB, "persona_id", "shard"),
            "persona_cluster": ((tables.PERSONA_CLUSTERS, "cluster"),),
            **{column: ((tables.PERSONA_HUB, "persona"),) for column in task.columns},  # written for the persona
            "demonstration_ids": ((tables.DEMONSTRATION_PERSONAS, "demonstration_id"),),
        },
    )


def _count_by_step(rejects: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reject in rejects:
        step = json.loads(reject["request"]).get("step", "?")
        counts[step] = counts.get(step, 0) + 1
    return dict(sorted(counts.items()))

"""Demonstrations for the few-shot prompting modes, and the `demonstrations` stage that derives their personas.

Each task has a pool of demonstrations: JSON lines with the fields of the task's first step's answer (e.g.
`{"problem": ...}`), plus optional `id`, `source` and task keys such as a reasoning entry's `variant`. The project
ships a pool per task (persona_hub_dagster/data/demonstrations/<task>.jsonl, written for the project); a folder named
by PERSONA_HUB_DEMONSTRATIONS replaces the pools of the tasks it has a `<task>.jsonl` for.

- few_shot: each request shows `shots` demonstrations, chosen by a seeded hash of (persona, sample), so different
  personas see different demonstrations and a re-run sees the same ones.
- persona_few_shot: each demonstration is shown with the persona that would have written it. Those personas come
  from the method itself: the unpartitioned `demonstrations` stage runs Text-to-Persona (relation `write`) over every
  pool entry once (cached, versioned, rejects kept); the synthesis stages read its table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import polars as pl

from persona_hub_dagster.lib import filesystems, prompts, tables
from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.ids import content_id, stable_rank
from persona_hub_dagster.lib.locations import join_location, normalize_location
from persona_hub_dagster.lib.personas import text_to_persona
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Stage, StageCall, StageResult, frame, rate, rejects_frame
from persona_hub_dagster.lib.synthesis.steps import SynthesisSettings, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks import TASKS

POOLS_ENV = "PERSONA_HUB_DEMONSTRATIONS"
META_KEYS = ("id", "source", "variant")  # keys of a pool entry that are about it, not part of the answer


class DemonstrationError(ValueError):
    """A pool that cannot be used, or derived personas that are missing."""


@dataclass(frozen=True)
class Demonstration:
    id: str  # content hash of the task and the answer: stable across files and edits elsewhere in the pool
    task: str
    fields: Mapping[str, Any]  # the answer, as the demonstrated step's schema has it
    meta: Mapping[str, Any]  # id, source, variant, ...
    persona: str | None = None  # persona_few_shot: derived by the demonstrations stage

    def answer_json(self) -> str:
        return json.dumps(dict(self.fields), ensure_ascii=False)

    def text(self) -> str:
        """What Text-to-Persona reads: the answer's values as plain text, one per line."""
        lines = []
        for value in self.fields.values():
            if isinstance(value, str):
                lines.append(value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                lines.extend(value)
            else:
                lines.append(json.dumps(value, ensure_ascii=False))
        return "\n".join(lines)


@dataclass(frozen=True)
class Pool:
    task: str
    uri: str
    demonstrations: tuple[Demonstration, ...]

    @property
    def version(self) -> str:
        return content_id("\n".join(d.id for d in self.demonstrations))[:12]

    def for_settings(self, task: SynthesisTask, settings: SynthesisSettings) -> list[Demonstration]:
        if task.pool_filter is None:
            return list(self.demonstrations)
        return [d for d in self.demonstrations if task.pool_filter(d.meta, settings)]


def pool_uri(task: str) -> str:
    """The user's `<task>.jsonl` under PERSONA_HUB_DEMONSTRATIONS when there is one, else the shipped pool."""
    folder = os.environ.get(POOLS_ENV)
    if folder:
        candidate = join_location(normalize_location(folder), f"{task}.jsonl")
        try:
            filesystems.stat(candidate)
            return candidate
        except FileNotFoundError:
            pass
    return str(resources.files("persona_hub_dagster") / "data" / "demonstrations" / f"{task}.jsonl")


def load_pool(task: SynthesisTask) -> Pool:
    return _load_pool(task.name, pool_uri(task.name))


@cache
def _load_pool(task_name: str, uri: str) -> Pool:
    task = TASKS[task_name]
    schema = task.demonstrated.schema(None)
    try:
        with filesystems.open_binary(uri) as handle:
            lines = handle.read().decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DemonstrationError(f"Cannot read the {task_name} demonstration pool {uri}: {exc}") from exc
    demonstrations = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            fields = {k: v for k, v in entry.items() if k not in META_KEYS}
            if schema is not None:
                jsonschema.validate(fields, schema)
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            message = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.message
            raise DemonstrationError(
                f"{uri}, line {number}: not a {task_name} demonstration ({message[:200]}); an entry holds the fields "
                f"of the task's answer{' ' + json.dumps(sorted(schema['properties'])) if schema else ''} and may add "
                f"{list(META_KEYS)}"
            ) from None
        identity = content_id(task_name + "\x1f" + json.dumps(fields, sort_keys=True, ensure_ascii=False))
        meta = {k: entry[k] for k in META_KEYS if k in entry}
        demonstrations.append(Demonstration(identity, task_name, fields, meta))
    if not demonstrations:
        raise DemonstrationError(f"The {task_name} demonstration pool {uri} is empty")
    return Pool(task_name, uri, tuple(demonstrations))


def choose(pool: Sequence[Demonstration], k: int, *, seed: int, persona_id: str, sample: int) -> list[Demonstration]:
    """k demonstrations for one request, by a seeded hash of the persona and sample (in pool order)."""
    ranked = sorted(pool, key=lambda d: stable_rank(seed, "demonstrations", persona_id, sample, d.id))[:k]
    order = {d.id: i for i, d in enumerate(pool)}
    return sorted(ranked, key=lambda d: order[d.id])


def render(demonstrations: Sequence[Demonstration], *, with_personas: bool) -> str:
    """The examples block of a prompt ("" for none): each demonstration delimited as data, in the answer's JSON
    format, with its author's persona in persona_few_shot mode."""
    if not demonstrations:
        return ""
    intro = (
        "Examples of answers written by other people (each above their answer); write a new one for the person "
        "below, do not copy them:"
        if with_personas
        else "Examples of good answers to this task (write a new one, do not copy them):"
    )
    blocks = []
    for d in demonstrations:
        shown = f"Written by: {d.persona}\n{d.answer_json()}" if with_personas else d.answer_json()
        blocks.append(prompts.delimited("example", shown))
    return "\n".join([intro, *blocks])


def derived_personas(store, pool: Pool) -> dict[str, str]:
    """{demonstration id: persona} from the demonstrations table for this pool version; a clear error when the
    table has not been materialized for it (persona_few_shot needs it)."""
    table = tables.DEMONSTRATION_PERSONAS
    hint = (
        f"persona_few_shot needs the personas of the {pool.task} demonstrations ({pool.uri}, version {pool.version}): "
        f"materialize the `{table.name}` asset first (UI: Assets -> {table.name} -> Materialize; CLI: "
        "`persona-hub demonstrations`)"
    )
    if not store.exists(table):
        raise DemonstrationError(hint)
    rows = (
        store.scan(table)
        .filter((pl.col("task") == pool.task) & (pl.col("pool_version") == pool.version))
        .select("demonstration_id", "persona")
        .collect()
    )
    if rows.is_empty():
        raise DemonstrationError(hint)
    return dict(rows.iter_rows())


def with_personas(demonstrations: Sequence[Demonstration], personas: Mapping[str, str]) -> list[Demonstration]:
    """The demonstrations that have a derived persona (Text-to-Persona may have rejected a few), with it."""
    return [replace(d, persona=personas[d.id]) for d in demonstrations if d.id in personas]


# ---------------------------------------------------------------------------------------------------- the stage

DEMONSTRATIONS_SCHEMA = {
    "task": pl.String,
    "demonstration_id": pl.String,
    "position": pl.Int32,  # in the pool file
    "answer": pl.String,  # the demonstration, as JSON
    "persona_id": pl.String,
    "persona": pl.String,
    "relation": pl.String,
    "granularity": pl.String,
    "pool_uri": pl.String,
    "pool_version": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class DemonstrationSettings:
    tasks: tuple[str, ...] = setting(tuple(TASKS), "The tasks whose pools get their personas derived.")
    granularity: str = setting("fine", "coarse: a role; fine: role plus interests and context.")
    temperature: float = setting(0.7, "Sampling temperature.")
    max_tokens: int = setting(96, "Output tokens per persona.")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"Unknown tasks {unknown}; the tasks are {list(TASKS)}")

    def text_to_persona(self) -> text_to_persona.TextToPersonaSettings:
        return text_to_persona.TextToPersonaSettings(
            relations=("write",),
            granularity=self.granularity,
            max_text_chars=4000,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )


def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: DemonstrationSettings) -> StageResult:
    pools = [load_pool(TASKS[name]) for name in settings.tasks]
    entries = {d.id: (pool, position, d) for pool in pools for position, d in enumerate(pool.demonstrations)}
    texts = pl.DataFrame(
        {"text_id": list(entries), "text": [d.text() for _, _, d in entries.values()]},
        schema={"text_id": pl.String, "text": pl.String},
    )
    output = text_to_persona.text_to_personas(
        texts,
        call.client,
        settings.text_to_persona(),
        shard=None,
        run_id=call.run_id,
        batch_size=call.batch_size,
        stage=tables.DEMONSTRATIONS.name,
    )
    rows = []
    for row in output.rows:
        pool, position, demonstration = entries[row["text_id"]]
        rows.append(
            {
                **row,
                "task": pool.task,
                "demonstration_id": demonstration.id,
                "position": position,
                "answer": demonstration.answer_json(),
                "pool_uri": pool.uri,
                "pool_version": pool.version,
            }
        )
    derived = frame(rows, DEMONSTRATIONS_SCHEMA).sort("task", "position")
    return StageResult(
        {tables.DEMONSTRATION_PERSONAS: derived, tables.DEMONSTRATIONS.rejects: rejects_frame(output.rejects)},
        {
            "demonstrations": len(entries),
            "with_persona_by_task": {p.task: derived.filter(pl.col("task") == p.task).height for p in pools},
            "pools": {p.task: p.uri for p in pools},
            "rejection_rate": rate(len(output.rejects), len(entries)),
        },
    )


def estimate(settings: DemonstrationSettings, shard: Estimating) -> StageEstimate:
    """One Text-to-Persona call per entry of the chosen pools, paid once across shards (replayed afterwards)."""
    if shard.store is not None and shard.store.exists(tables.DEMONSTRATION_PERSONAS):
        entries: list = []  # derived already: a re-run replays its calls from the cache
    else:
        entries = [entry for name in settings.tasks for entry in load_pool(TASKS[name]).demonstrations]
    texts = [entry.text() for entry in entries]
    prompt = shard.template_tokens(text_to_persona.TEMPLATE) + sum(map(shard.count, texts)) / max(len(texts), 1)
    return shard.cost(
        tables.DEMONSTRATION_PERSONAS.name,
        len(entries),
        prompt=prompt,
        completion=text_to_persona.TYPICAL_PERSONA_TOKENS,
        max_tokens=settings.max_tokens,
        prompt_from_past=False,
    )


STAGE = Stage(
    tables.DEMONSTRATIONS,
    op="derive_demonstration_personas",
    settings=DemonstrationSettings,
    run=run,
    prompts=lambda settings: [text_to_persona.template().version],
    samplings=lambda settings: [settings.text_to_persona().sampling],
    # A pool that changes (a user's PERSONA_HUB_DEMONSTRATIONS) marks the asset stale.
    version_extra=lambda settings: tuple(load_pool(TASKS[name]).version for name in settings.tasks),
    estimate=estimate,
)

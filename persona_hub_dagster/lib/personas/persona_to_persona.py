"""Persona-to-Persona: from a persona, the people in close interpersonal relationships with it (a patient, a
colleague, a supplier, a family member, ...), hop after hop.

Breadth-first: hop 1 expands the shard's text personas, hop h+1 expands what hop h produced. Each persona is expanded
at most once (by persona_id), and the shard's budget of LLM calls caps the whole walk: when it runs out, the current
hop is cut (in a deterministic order) and no further hop starts. Every new persona records its parent, the text
persona its chain started from (root) and that root's text, so lineage is one join away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.estimate import PERSONA_TOKENS, Estimating, StageEstimate
from persona_hub_dagster.lib.ids import stable_rank
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMResponse, SamplingParams
from persona_hub_dagster.lib.personas import MIN_PERSONA_CHARS, normalize_description, persona_id
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.shards import holds_given_personas
from persona_hub_dagster.lib.stage import (
    Planned,
    Provenance,
    Rejected,
    RowsAndRejects,
    Stage,
    StageCall,
    StageResult,
    chat_request,
    frame,
    rejects_frame,
    run_requests,
    same_columns,
)

TEMPLATE = "persona_to_persona"

EXPANDED_PERSONAS_SCHEMA = {
    "persona_id": pl.String,
    "persona": pl.String,
    "relation": pl.String,  # how this person relates to the parent: "patient", "colleague", ...
    "parent_persona_id": pl.String,
    "root_persona_id": pl.String,  # the text persona the chain started from
    "text_id": pl.String,  # the root's source text
    "hop": pl.Int32,
    "shard": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class ExpansionSettings:
    hops: int = setting(6, "Persona-to-Persona iterations (the paper: 6).")
    fan_out: int = setting(3, "Related personas asked for per persona and hop.")
    max_calls: int = setting(2000, "The shard's budget of LLM requests over all hops.")
    seed: int = setting(0, "Seeds the order in which a hop is cut when the budget runs out.")
    temperature: float = setting(0.8, "Sampling temperature.")
    max_tokens: int = setting(256, "Output tokens per expanded persona (all its related people).")
    expand_persona_shards: bool = setting(
        False,
        "Also expand shards of ready-made personas (kind `personas`). Off: their personas go to the hub as given, "
        "and this stage makes no LLM call for them.",
    )

    def __post_init__(self) -> None:
        if self.hops < 1 or self.fan_out < 1 or self.max_calls < 0:
            raise ValueError("hops and fan_out must be at least 1, max_calls at least 0")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)

    def schema(self) -> dict[str, Any]:
        related = {
            "type": "object",
            "properties": {
                "relation": {"type": "string", "minLength": 1, "maxLength": 80},
                "persona": {"type": "string", "minLength": 1, "maxLength": 600},
            },
            "required": ["relation", "persona"],
        }
        return {
            "type": "object",
            "properties": {"related": {"type": "array", "items": related, "minItems": 1, "maxItems": self.fan_out}},
            "required": ["related"],
        }


def template() -> prompts.PromptTemplate:
    return prompts.load(TEMPLATE)


def parse(item: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
    seen = set()
    rows = []
    for related in response.parsed["related"]:
        persona = normalize_description(related["persona"])
        relation = normalize_description(related["relation"]).lower()
        pid = persona_id(persona)
        unusable = placeholder_echo(persona) or len(persona) < MIN_PERSONA_CHARS
        if unusable or pid in seen or pid == item.keys["parent_persona_id"]:
            continue
        seen.add(pid)
        rows.append({"persona_id": pid, "persona": persona, "relation": relation})
    if not rows:
        raise Rejected("no_usable_persona: every related persona was a placeholder, too short or a copy")
    return rows


def expand_personas(
    seeds: pl.DataFrame,
    client: LLMClient,
    settings: ExpansionSettings,
    *,
    shard: str,
    run_id: str,
    batch_size: int = 32,
) -> RowsAndRejects:
    """`seeds`: the shard's text personas (persona_id, persona, text_id)."""
    prompt = template()
    provenance = Provenance(tables.PERSONA_TO_PERSONA.name, shard, run_id, client.backend.model, prompt.version)
    schema = settings.schema()
    output = RowsAndRejects()
    expanded: set[str] = set()
    frontier = [
        {"persona_id": p, "persona": text, "root_persona_id": p, "text_id": t}
        for p, text, t in seeds.select("persona_id", "persona", "text_id").unique("persona_id").iter_rows()
    ]
    budget = settings.max_calls
    for hop in range(1, settings.hops + 1):
        todo = sorted(
            (node for node in frontier if node["persona_id"] not in expanded),
            key=lambda node: stable_rank(settings.seed, hop, node["persona_id"]),
        )[:budget]
        if not todo:
            break
        planned = []
        for node in todo:
            expanded.add(node["persona_id"])
            request = chat_request(
                prompt,
                sampling=settings.sampling,
                json_schema=schema,
                request_id=node["persona_id"],
                persona=prompts.delimited("persona", node["persona"]),
                fan_out=settings.fan_out,
            )
            keys = {
                "parent_persona_id": node["persona_id"],
                "root_persona_id": node["root_persona_id"],
                "text_id": node["text_id"],
                "hop": hop,
            }
            planned.append(Planned(node["persona_id"], request, keys))
        budget -= len(planned)
        result = run_requests(client, planned, parse, provenance, batch_size=batch_size)
        output.extend(result)
        frontier = result.rows
    return output


def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: ExpansionSettings) -> StageResult:
    seeds = inputs[tables.TEXT_PERSONAS].select("persona_id", "persona", "text_id").collect()
    if not settings.expand_persona_shards and holds_given_personas(call.store, call.shard):
        return StageResult(
            {
                tables.EXPANDED_PERSONAS: frame([], EXPANDED_PERSONAS_SCHEMA),
                tables.PERSONA_TO_PERSONA.rejects: rejects_frame([]),
            },
            {
                "seed_personas": seeds["persona_id"].n_unique(),
                "skipped": "a shard of ready-made personas: set expand_persona_shards to expand it",
                "calls_used": 0,
            },
        )
    output = expand_personas(
        seeds, call.client, settings, shard=call.shard, run_id=call.run_id, batch_size=call.batch_size
    )
    expanded = frame(output.rows, EXPANDED_PERSONAS_SCHEMA)
    per_hop = expanded.group_by("hop").len().sort("hop")
    return StageResult(
        {tables.EXPANDED_PERSONAS: expanded, tables.PERSONA_TO_PERSONA.rejects: rejects_frame(output.rejects)},
        {
            "seed_personas": seeds["persona_id"].n_unique(),
            "personas_per_hop": {str(hop): n for hop, n in per_hop.iter_rows()},
            "calls_used": call.client.usage.requests,
            "call_budget": settings.max_calls,
        },
    )


TYPICAL_RELATED_TOKENS = 45  # one related person (persona and relation) as JSON, measured on the embedded model


def estimate(settings: ExpansionSettings, shard: Estimating) -> StageEstimate:
    """Breadth-first as `expand_personas` goes: each hop expands the last hop's new personas, `fan_out` each, until
    `hops` or the `max_calls` budget."""
    name = tables.EXPANDED_PERSONAS.name
    seeds = shard.rows.get(tables.TEXT_PERSONAS.name, 0)
    if shard.given_personas and not settings.expand_persona_shards:
        seeds = 0
    calls, budget, frontier = 0, settings.max_calls, seeds
    for _hop in range(settings.hops):
        todo = min(frontier, budget)
        if not todo:
            break
        calls, budget, frontier = calls + todo, budget - todo, todo * settings.fan_out
    return shard.cost(
        name,
        calls,
        prompt=shard.template_tokens(TEMPLATE) + PERSONA_TOKENS,
        completion=settings.fan_out * TYPICAL_RELATED_TOKENS,
        max_tokens=settings.max_tokens,
        rows={name: calls * settings.fan_out},
    )


STAGE = Stage(
    tables.PERSONA_TO_PERSONA,
    op="persona_to_persona",
    settings=ExpansionSettings,
    run=run,
    prompts=lambda settings: [template().version],
    samplings=lambda settings: [settings.sampling],
    reads=(tables.TEXT_PERSONAS,),
    estimate=estimate,
    lineage={
        **same_columns(tables.TEXT_PERSONAS, "text_id", "shard"),
        "persona": ((tables.TEXT_PERSONAS, "persona"),),
        "persona_id": ((tables.TEXT_PERSONAS, "persona"),),
        "parent_persona_id": ((tables.TEXT_PERSONAS, "persona_id"),),
        "root_persona_id": ((tables.TEXT_PERSONAS, "persona_id"),),
    },
)

"""Text-to-Persona: for each web text, ask who is likely to read / write / like / dislike it, and describe that
person at a chosen granularity. One request per (text, relation); the text goes into the prompt delimited as data."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.ids import stable_rank
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMResponse, SamplingParams
from persona_hub_dagster.lib.personas import GIVEN, MIN_PERSONA_CHARS, normalize_description, persona_id
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
    rate,
    rejects_frame,
    run_requests,
    same_columns,
)

TEMPLATE = "text_to_persona"
# How each relation reads in the question "Who is likely to ... the text below?"
RELATIONS = {"read": "read", "write": "have written", "like": "like", "dislike": "dislike"}
GRANULARITIES = ("coarse", "fine")

PERSONA_SCHEMA = {
    "type": "object",
    "properties": {"persona": {"type": "string", "minLength": 1, "maxLength": 600}},
    "required": ["persona"],
    "additionalProperties": False,
}

TEXT_PERSONAS_SCHEMA = {
    "persona_id": pl.String,
    "persona": pl.String,
    "text_id": pl.String,
    "shard": pl.String,
    "relation": pl.String,
    "granularity": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class TextToPersonaSettings:
    relations: tuple[str, ...] = setting(
        tuple(RELATIONS), f"Who to ask about, any of {list(RELATIONS)} (the paper uses all four)."
    )
    relations_per_text: int | None = setting(
        None, "null: every relation for every text; k: k relations sampled per text (by text_id and seed; cheaper)."
    )
    granularity: str = setting("fine", "coarse: a role; fine: role plus interests and context.")
    max_texts: int | None = setting(None, "null: every text of the shard; n: a deterministic sample of n.")
    max_text_chars: int = setting(2000, "Longer texts are cut in the prompt (the model's context is finite).")
    seed: int = setting(0, "Seeds the sampling of texts and relations.")
    temperature: float = setting(0.7, "Sampling temperature.")
    max_tokens: int = setting(96, "Output tokens per persona.")

    def __post_init__(self) -> None:
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown or not self.relations:
            raise ValueError(f"relations must be a non-empty subset of {list(RELATIONS)}, got {list(self.relations)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, not {self.granularity!r}")
        if self.relations_per_text is not None and not 1 <= self.relations_per_text <= len(self.relations):
            raise ValueError(f"relations_per_text must be between 1 and {len(self.relations)}")

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens)


def template() -> prompts.PromptTemplate:
    return prompts.load(TEMPLATE)


def select_texts(texts: pl.DataFrame, settings: TextToPersonaSettings) -> pl.DataFrame:
    """The texts to ask about, in text_id order; a deterministic sample when max_texts is set."""
    texts = texts.select("text_id", "text").sort("text_id")
    if settings.max_texts is not None and texts.height > settings.max_texts:
        ranked = texts.with_columns(
            rank=pl.Series([stable_rank(settings.seed, t) for t in texts["text_id"]], dtype=pl.String)
        )
        texts = ranked.sort("rank").head(settings.max_texts).drop("rank").sort("text_id")
    return texts


def relations_for(text_id: str, settings: TextToPersonaSettings) -> list[str]:
    if settings.relations_per_text is None:
        return list(settings.relations)
    ranked = sorted(settings.relations, key=lambda r: stable_rank(settings.seed, text_id, r))
    return sorted(ranked[: settings.relations_per_text], key=settings.relations.index)


def plan(texts: pl.DataFrame, settings: TextToPersonaSettings) -> list[Planned]:
    prompt = template()
    planned = []
    for text_id, text in select_texts(texts, settings).iter_rows():
        shown = text if len(text) <= settings.max_text_chars else text[: settings.max_text_chars] + " [...]"
        for relation in relations_for(text_id, settings):
            request = chat_request(
                prompt,
                sampling=settings.sampling,
                json_schema=PERSONA_SCHEMA,
                request_id=f"{text_id}:{relation}",
                relation_verb=RELATIONS[relation],
                granularity=settings.granularity,
                text=prompts.delimited("text", shown),
            )
            keys = {"text_id": text_id, "relation": relation, "granularity": settings.granularity}
            planned.append(Planned(text_id, request, keys))
    return planned


def parse(item: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
    persona = normalize_description(response.parsed["persona"])
    if placeholder_echo(persona):
        raise Rejected("placeholder_echo: the model repeated the answer format instead of answering")
    if len(persona) < MIN_PERSONA_CHARS:
        raise Rejected(f"too_short: the persona has {len(persona)} characters")
    yield {"persona_id": persona_id(persona), "persona": persona}


def text_to_personas(
    texts: pl.DataFrame,
    client: LLMClient,
    settings: TextToPersonaSettings,
    *,
    shard: str | None,
    run_id: str,
    batch_size: int = 32,
    stage: str = tables.TEXT_TO_PERSONA.name,
) -> RowsAndRejects:
    provenance = Provenance(stage, shard, run_id, client.backend.model, template().version)
    return run_requests(client, plan(texts, settings), parse, provenance, batch_size=batch_size)


def given_personas(texts: pl.DataFrame, *, shard: str | None, run_id: str) -> pl.DataFrame:
    """A persona shard's text personas: each record's text is the persona, taken as it is (no model, no prompt)."""
    personas = [normalize_description(text) for text in texts["text"]]
    return pl.DataFrame(
        {
            "persona_id": [persona_id(p) for p in personas],
            "persona": personas,
            "text_id": texts["text_id"],
            "shard": shard,
            "relation": GIVEN,
            "granularity": None,
            "model": None,
            "prompt_version": None,
            "run_id": run_id,
        },
        schema=TEXT_PERSONAS_SCHEMA,
    )


def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: TextToPersonaSettings) -> StageResult:
    texts = inputs[tables.RAW_TEXT].select("text_id", "text").collect()
    if holds_given_personas(call.store, call.shard):
        personas = given_personas(texts, shard=call.shard, run_id=call.run_id)
        no_rejects = rejects_frame([])
        return StageResult(
            {tables.TEXT_PERSONAS: personas, tables.TEXT_TO_PERSONA.rejects: no_rejects},
            {"given_personas": personas.height, "distinct_personas": personas["persona_id"].n_unique()},
        )
    output = text_to_personas(
        texts, call.client, settings, shard=call.shard, run_id=call.run_id, batch_size=call.batch_size
    )
    personas = frame(output.rows, TEXT_PERSONAS_SCHEMA)
    return StageResult(
        {tables.TEXT_PERSONAS: personas, tables.TEXT_TO_PERSONA.rejects: rejects_frame(output.rejects)},
        {
            "texts": (asked := select_texts(texts, settings).height),
            # A sample (max_texts, `persona-hub materialize --sample N`) says so on the partition's materialization.
            "texts_in_shard": texts.height,
            "sample": asked < texts.height,
            "distinct_personas": personas["persona_id"].n_unique(),
            "rejection_rate": rate(len(output.rejects), len(output.rows) + len(output.rejects)),
        },
    )


TYPICAL_PERSONA_TOKENS = 40  # a fine-grained persona as JSON, measured on the embedded model


def estimate(settings: TextToPersonaSettings, shard: Estimating) -> StageEstimate:
    """One call per text and relation, each with the text itself in the prompt (counted exactly)."""
    name = tables.TEXT_PERSONAS.name
    if shard.given_personas:
        return shard.cost(name, 0, prompt=0, completion=0, max_tokens=None, rows={name: shard.texts.height})
    texts = select_texts(shard.texts, settings)
    per_text = settings.relations_per_text or len(settings.relations)
    text_tokens = sum(shard.count(text[: settings.max_text_chars]) for text in texts["text"])
    prompt = shard.template_tokens(TEMPLATE) + text_tokens / max(texts.height, 1)
    calls = texts.height * per_text
    return shard.cost(
        name,
        calls,
        prompt=prompt,
        completion=TYPICAL_PERSONA_TOKENS,
        max_tokens=settings.max_tokens,
        rows={name: calls},
        prompt_from_past=False,  # the corpus's texts make the prompt: counted, not taken from another shard's
    )


STAGE = Stage(
    tables.TEXT_TO_PERSONA,
    op="text_to_persona",
    settings=TextToPersonaSettings,
    run=run,
    prompts=lambda settings: [template().version],
    samplings=lambda settings: [settings.sampling],
    reads=(tables.RAW_TEXT,),
    estimate=estimate,
    lineage={
        **same_columns(tables.RAW_TEXT, "text_id", "shard"),
        # the persona is written from the text; its id hashes the persona
        "persona": ((tables.RAW_TEXT, "text"),),
        "persona_id": ((tables.RAW_TEXT, "text"),),
    },
)

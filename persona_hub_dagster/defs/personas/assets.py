"""text_personas and expanded_personas: the two persona stages, each with a rejects table beside it."""

from dataclasses import replace

import dagster as dg
from pydantic import Field

from persona_hub_dagster.defs.models import LLMResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.raw_text.assets import RAW_TEXT
from persona_hub_dagster.defs.stages import rate, stage_code_version, stage_specs, write_stage_tables
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib.generation import frame as rows_frame
from persona_hub_dagster.lib.generation import rejects_frame
from persona_hub_dagster.lib.personas import persona_to_persona, text_to_persona
from persona_hub_dagster.lib.personas.persona_to_persona import EXPANDED_PERSONAS_SCHEMA, ExpansionSettings
from persona_hub_dagster.lib.personas.text_to_persona import (
    RELATIONS,
    TEXT_PERSONAS_SCHEMA,
    TextToPersonaSettings,
)

TEXT_PERSONAS = dg.AssetKey("text_personas")
TEXT_PERSONAS_REJECTS = dg.AssetKey("text_personas_rejects")
EXPANDED_PERSONAS = dg.AssetKey("expanded_personas")
EXPANDED_PERSONAS_REJECTS = dg.AssetKey("expanded_personas_rejects")

_T2P, _P2P = TextToPersonaSettings(), ExpansionSettings()


class TextPersonasConfig(dg.Config):
    relations: list[str] = Field(
        default=list(RELATIONS), description=f"Who to ask about, any of {list(RELATIONS)} (the paper uses all four)."
    )
    relations_per_text: int | None = Field(
        default=None, description="null: every relation for every text; k: k relations sampled per text (cheaper)."
    )
    granularity: str = Field(default="fine", description="coarse: a role; fine: role plus interests and context.")
    max_texts: int | None = Field(default=None, description="null: every text; n: a deterministic sample of n.")
    max_text_chars: int = Field(default=_T2P.max_text_chars, description="Longer texts are cut in the prompt.")
    seed: int = Field(default=0, description="Seeds the sampling of texts and relations.")
    temperature: float = Field(default=_T2P.sampling.temperature)
    max_tokens: int = Field(default=_T2P.sampling.max_tokens)
    batch_size: int = Field(default=32, description="Requests per backend call and per response-cache commit.")

    def settings(self) -> TextToPersonaSettings:
        return TextToPersonaSettings(
            relations=tuple(self.relations),
            relations_per_text=self.relations_per_text,
            granularity=self.granularity,
            max_texts=self.max_texts,
            max_text_chars=self.max_text_chars,
            seed=self.seed,
            sampling=replace(_T2P.sampling, temperature=self.temperature, max_tokens=self.max_tokens),
        )


@dg.multi_asset(
    name="text_to_persona",
    specs=stage_specs(
        {
            TEXT_PERSONAS: (
                "Text-to-Persona: for each text of the shard, who is likely to read, write, like or dislike it, as a "
                "persona description. `persona_id` hashes the normalized description; `text_id` joins raw_text."
            ),
            TEXT_PERSONAS_REJECTS: "Model outputs text_personas could not use, verbatim, with the reason "
            "(invalid JSON, ...).",
        },
        deps=[RAW_TEXT],
        group="personas",
        code_version=stage_code_version([text_to_persona.template().version], [_T2P.sampling]),
    ),
    partitions_def=text_shards,
    can_subset=False,
)
def text_to_persona_asset(
    context: dg.AssetExecutionContext, config: TextPersonasConfig, storage: DeltaStorageResource, llm: LLMResource
):
    shard, store = context.partition_key, storage.store()
    texts = store.scan(RAW_TEXT.path, [shard]).select("text_id", "text").collect()
    settings = config.settings()
    client = llm.client(store, stage="text_personas", shard=shard, run_id=context.run.run_id)
    output = text_to_persona.text_to_personas(
        texts, client, settings, shard=shard, run_id=context.run.run_id, batch_size=config.batch_size
    )
    personas = rows_frame(output.rows, TEXT_PERSONAS_SCHEMA)
    context.log.info(f"text_personas {shard}: {personas.height} personas, {len(output.rejects)} rejected")
    requests = len(output.rows) + len(output.rejects)
    yield from write_stage_tables(
        context,
        store,
        shard,
        {TEXT_PERSONAS: personas, TEXT_PERSONAS_REJECTS: rejects_frame(output.rejects)},
        usage=client.usage,
        metadata={
            TEXT_PERSONAS: {
                "texts": dg.MetadataValue.int(text_to_persona.select_texts(texts, settings).height),
                "distinct_personas": dg.MetadataValue.int(personas["persona_id"].n_unique()),
                "rejection_rate": rate(len(output.rejects), requests),
            }
        },
    )


class ExpansionConfig(dg.Config):
    hops: int = Field(default=_P2P.hops, description="Persona-to-Persona iterations (the paper: 6).")
    fan_out: int = Field(default=_P2P.fan_out, description="Related personas asked for per persona and hop.")
    max_calls: int = Field(default=_P2P.max_calls, description="The shard's budget of LLM requests over all hops.")
    seed: int = Field(default=0, description="Seeds the order in which a hop is cut when the budget runs out.")
    temperature: float = Field(default=_P2P.sampling.temperature)
    max_tokens: int = Field(default=_P2P.sampling.max_tokens)
    batch_size: int = Field(default=32, description="Requests per backend call and per response-cache commit.")

    def settings(self) -> ExpansionSettings:
        return ExpansionSettings(
            hops=self.hops,
            fan_out=self.fan_out,
            max_calls=self.max_calls,
            seed=self.seed,
            sampling=replace(_P2P.sampling, temperature=self.temperature, max_tokens=self.max_tokens),
        )


@dg.multi_asset(
    name="persona_to_persona",
    specs=stage_specs(
        {
            EXPANDED_PERSONAS: (
                "Persona-to-Persona, the nightly stage: from each text persona, the people in close relationships "
                "with it (patient, colleague, supplier, family member, ...), hop after hop up to `hops`, within a "
                "per-shard budget of LLM calls. Each row records parent_persona_id, root_persona_id, hop, relation "
                "and the root's text_id. Materialized every night at 02:00 for shards whose text personas changed "
                "(schedule nightly_persona_expansion); a re-run replays finished calls from the response cache."
            ),
            EXPANDED_PERSONAS_REJECTS: "Persona-to-Persona outputs that could not be used, verbatim, with the reason.",
        },
        deps=[TEXT_PERSONAS],
        group="personas",
        code_version=stage_code_version([persona_to_persona.template().version], [_P2P.sampling]),
    ),
    partitions_def=text_shards,
    can_subset=False,
)
def persona_to_persona_asset(
    context: dg.AssetExecutionContext, config: ExpansionConfig, storage: DeltaStorageResource, llm: LLMResource
):
    shard, store = context.partition_key, storage.store()
    seeds = store.scan(TEXT_PERSONAS.path, [shard]).select("persona_id", "persona", "text_id").collect()
    client = llm.client(store, stage="expanded_personas", shard=shard, run_id=context.run.run_id)
    output = persona_to_persona.expand_personas(
        seeds, client, config.settings(), shard=shard, run_id=context.run.run_id, batch_size=config.batch_size
    )
    expanded = rows_frame(output.rows, EXPANDED_PERSONAS_SCHEMA)
    per_hop = expanded.group_by("hop").len().sort("hop")
    context.log.info(f"expanded_personas {shard}: {expanded.height} personas over {per_hop.height} hops")
    yield from write_stage_tables(
        context,
        store,
        shard,
        {EXPANDED_PERSONAS: expanded, EXPANDED_PERSONAS_REJECTS: rejects_frame(output.rejects)},
        usage=client.usage,
        metadata={
            EXPANDED_PERSONAS: {
                "seed_personas": dg.MetadataValue.int(seeds["persona_id"].n_unique()),
                "personas_per_hop": dg.MetadataValue.json({str(h): n for h, n in per_hop.iter_rows()}),
                "calls_used": dg.MetadataValue.int(client.usage.requests),
                "call_budget": dg.MetadataValue.int(config.max_calls),
            }
        },
    )

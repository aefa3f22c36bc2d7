"""persona_hub and persona_hub_decisions: each shard's candidate personas deduplicated against the shard itself and
against every hub shard registered before it (MinHash, then embeddings, after quality filters)."""

import dagster as dg
import polars as pl
from pydantic import Field

from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.personas.assets import EXPANDED_PERSONAS, TEXT_PERSONAS
from persona_hub_dagster.defs.storage import DeltaStorageResource, commit_metadata, table_write_metadata
from persona_hub_dagster.lib.dedup.hub import (
    BANDS_TABLE,
    DECISIONS_TABLE,
    EMBEDDINGS_TABLE,
    HUB_TABLE,
    RUNS_SCHEMA,
    RUNS_TABLE,
    HubSettings,
    dedup_shard,
    load_candidates,
    prefix_shards,
)
from persona_hub_dagster.lib.embeddings import EMBEDDING_MODEL_ENV, embedding_identity
from persona_hub_dagster.lib.shards import ShardRegistry

PERSONA_HUB = dg.AssetKey("persona_hub")
PERSONA_HUB_DECISIONS = dg.AssetKey("persona_hub_decisions")
HUB_POOL = "persona_hub"


class HubConfig(dg.Config):
    minhash_threshold: float = Field(default=0.9, description="Word 1-gram Jaccard at which personas are duplicates.")
    num_perm: int = Field(default=128, description="MinHash permutations.")
    ngram: int = Field(default=1, description="Word n-gram size for MinHash.")
    min_recall: float = Field(
        default=0.95, description="LSH bands are chosen so that a pair at the threshold is found with this chance."
    )
    semantic_threshold: float | None = Field(
        default=0.9,
        description="Embedding cosine at which personas are duplicates (0.5 for diversity over count); null: skip. "
        "Thresholds are per embedding model: the fast (model2vec) embeddings call for ~0.89 where MiniLM has 0.9.",
    )
    quality_filter: bool = Field(default=True, description="Reject empty, truncated, refusals, template echoes, ...")

    def settings(self) -> HubSettings:
        return HubSettings(
            minhash_threshold=self.minhash_threshold,
            num_perm=self.num_perm,
            ngram=self.ngram,
            min_recall=self.min_recall,
            semantic_threshold=self.semantic_threshold,
            apply_quality_filter=self.quality_filter,
        )


def default_fingerprint() -> str:
    """The default settings with the configured embedding model: the hub's code_version, so that a change of either
    marks every hub shard stale in the UI. (Run-config overrides cannot do that; the hub_config_consistent check
    reports shards built with other settings.)"""
    import os

    return HubSettings().fingerprint(embedding_identity(os.environ.get(EMBEDDING_MODEL_ENV)))


@dg.multi_asset(
    name="build_persona_hub",
    specs=[
        dg.AssetSpec(
            PERSONA_HUB,
            deps=[TEXT_PERSONAS, EXPANDED_PERSONAS],
            description=(
                "The deduplicated personas of each shard: quality-filtered, then MinHash (word 1-grams, 128 "
                "permutations, Jaccard 0.9, exact-verified) and embedding cosine (0.9) against the shard and every "
                "shard registered before it. Earlier shards never lose personas when later shards arrive."
            ),
            group_name="hub",
            kinds={"deltalake", "polars", "faiss"},
            code_version=f"dedup-{default_fingerprint()}",
        ),
        dg.AssetSpec(
            PERSONA_HUB_DECISIONS,
            deps=[TEXT_PERSONAS, EXPANDED_PERSONAS],
            description=(
                "Every candidate persona with its decision: kept, or dropped with the reason (minhash, semantic, "
                "quality:<reason>), the persona it duplicates (duplicate_of, duplicate_of_shard) and the similarity."
            ),
            group_name="hub",
            kinds={"deltalake", "polars"},
            code_version=f"dedup-{default_fingerprint()}",
        ),
    ],
    partitions_def=text_shards,
    # A range of shards is one run, processed in registration order; hub runs never overlap (pool limit 1), so a
    # shard is always deduplicated against the finished hub of the shards before it.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=HUB_POOL,
    can_subset=False,
)
def build_persona_hub(
    context: dg.AssetExecutionContext, config: HubConfig, storage: DeltaStorageResource, embeddings: EmbeddingsResource
):
    store = storage.store()
    registry = ShardRegistry(store).frame()
    order = {s: i for i, s in enumerate(registry.sort("registration_seq", "shard")["shard"].to_list())}
    shards = sorted(context.partition_keys, key=lambda s: (order.get(s, len(order)), s))
    settings = config.settings()
    embedder = embeddings.lazy_embedder(store) if settings.semantic_threshold is not None else None
    run_id = context.run.run_id
    provenance = commit_metadata(run_id, PERSONA_HUB)
    per_shard, writes = {}, {}
    for shard in shards:
        candidates = load_candidates(store, shard)
        expected, present = prefix_shards(store, registry, shard)
        if len(present) < len(expected):
            context.log.warning(
                f"Shard {shard!r} is deduplicated against an incomplete prefix: "
                f"{sorted(set(expected) - set(present))} registered earlier have no hub yet."
            )
        result = dedup_shard(
            store, shard, candidates, prefix=present, settings=settings, embedder=embedder, run_id=run_id
        )
        writes[PERSONA_HUB] = store.write_partitions(
            HUB_TABLE, result.hub, partitions=[shard], commit_metadata=provenance
        )
        writes[PERSONA_HUB_DECISIONS] = store.write_partitions(
            DECISIONS_TABLE, result.decisions, partitions=[shard], commit_metadata=provenance
        )
        store.write_partitions(BANDS_TABLE, result.bands, partitions=[shard], commit_metadata=provenance)
        store.write_partitions(EMBEDDINGS_TABLE, result.embeddings, partitions=[shard], commit_metadata=provenance)
        run = pl.DataFrame([{**result.run, "prefix_expected": expected}], schema=RUNS_SCHEMA)
        store.write_partitions(RUNS_TABLE, run, partitions=[shard], commit_metadata=provenance)
        per_shard[shard] = result.counts
        context.log.info(f"persona_hub {shard}: {result.counts}")

    totals: dict[str, int] = {}
    for counts in per_shard.values():
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    summary = {
        "candidates": dg.MetadataValue.int(totals.get("candidates", 0)),
        "kept": dg.MetadataValue.int(totals.get("kept", 0)),
        "duplicate_rate": dg.MetadataValue.float(
            round(1 - totals.get("kept", 0) / totals["candidates"], 4) if totals.get("candidates") else 0.0
        ),
        "dropped_by_reason": dg.MetadataValue.json(
            {k: v for k, v in sorted(totals.items()) if k not in ("candidates", "kept")}
        ),
        "hub_config": dg.MetadataValue.text(settings.fingerprint(embedder.identity if embedder else None)),
        "shards_in_order": dg.MetadataValue.json(shards),
    }
    if len(per_shard) > 1:
        summary["per_shard"] = dg.MetadataValue.json(per_shard)
    yield dg.MaterializeResult(asset_key=PERSONA_HUB, metadata={**table_write_metadata(writes[PERSONA_HUB]), **summary})
    yield dg.MaterializeResult(
        asset_key=PERSONA_HUB_DECISIONS,
        metadata={
            **table_write_metadata(writes[PERSONA_HUB_DECISIONS]),
            "dropped_by_reason": summary["dropped_by_reason"],
        },
    )

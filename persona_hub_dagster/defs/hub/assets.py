"""persona_hub and persona_hub_decisions: each shard's candidate personas deduplicated against the shard itself and
against every hub shard registered before it (MinHash, then embeddings, after quality filters)."""

import dagster as dg

from persona_hub_dagster.defs.automation import HUB_POOL, hub_condition
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import asset_key, reported, settings_config, stage_defaults, stage_specs
from persona_hub_dagster.defs.storage import DeltaStorageResource, commit_metadata, table_write_metadata
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup.build import build_shard, catch_up_index, open_index
from persona_hub_dagster.lib.dedup.hub import HubSettings, hub_lineage, prefix_shards
from persona_hub_dagster.lib.embeddings import EMBEDDING_MODEL_ENV, embedding_identity
from persona_hub_dagster.lib.shards import ShardRegistry

PERSONA_HUB, PERSONA_HUB_DECISIONS = asset_key(tables.PERSONA_HUB), asset_key(tables.PERSONA_HUB_DECISIONS)


HUB_OP = "build_persona_hub"
HubConfig = settings_config(HubSettings, "HubConfig", op=HUB_OP)


def default_fingerprint() -> str:
    """The default settings with the configured embedding model: the hub's code_version, so that a change of either
    marks every hub shard stale in the UI. (Run-config overrides cannot do that; the hub_config_consistent check
    reports shards built with other settings.)"""
    import os

    return stage_defaults(HubSettings, HUB_OP).fingerprint(embedding_identity(os.environ.get(EMBEDDING_MODEL_ENV)))


@dg.multi_asset(
    name=HUB_OP,
    specs=stage_specs(
        tables.HUB,
        deps=tables.HUB_SOURCES,
        group="hub",
        code_version=f"dedup-{default_fingerprint()}",
        kinds=["faiss"],
        automation_condition=hub_condition(asset_key(tables.TEXT_PERSONAS), asset_key(tables.EXPANDED_PERSONAS)),
    ),
    partitions_def=text_shards,
    # A range of shards is one run, processed in registration order; hub runs never overlap (pool limit 1), so a
    # shard is always deduplicated against the finished hub of the shards before it.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=HUB_POOL,
    can_subset=True,  # both tables are always written (see `reported`)
)
def build_persona_hub(
    context: dg.AssetExecutionContext, config: HubConfig, storage: DeltaStorageResource, embeddings: EmbeddingsResource
):
    store = storage.store()
    registry = ShardRegistry(store).frame()
    order = {s: i for i, s in enumerate(registry.sort("registration_seq", "shard")["shard"].to_list())}
    shards = sorted(context.partition_keys, key=lambda s: (order.get(s, len(order)), s))
    settings = config.to_settings()
    embedder = embeddings.lazy_embedder(store) if settings.semantic_threshold is not None else None
    run_id = context.run.run_id
    per_shard, writes = {}, {}
    with open_index(store) as index:
        caught_up = catch_up_index(index, store, settings, embedder)
        if caught_up["added"] or caught_up["removed"]:
            context.log.info(f"hub index caught up with the tables: {caught_up}")
        published = {"uploaded": 0, "uploaded_bytes": 0, "deleted": 0}
        for shard in shards:
            per_shard[shard] = _build_shard(context, store, index, registry, shard, settings, embedder, run_id, writes)
            # Mirrored shard by shard: a run that dies mid-range loses no finished shard's entries.
            for key, value in index.publish().items():
                published[key] += value
        index_stats, index_seconds = index.stats(), dict(index.seconds)

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
        "hub_index": dg.MetadataValue.json({**index_stats, "published": published, "seconds": index_seconds}),
    }
    if len(per_shard) > 1:
        summary["per_shard"] = dg.MetadataValue.json(per_shard)
    hub = dg.MaterializeResult(
        asset_key=PERSONA_HUB,
        metadata={
            **table_write_metadata(writes[tables.PERSONA_HUB], hub_lineage(store)),
            **summary,
        },
    )
    decisions = dg.MaterializeResult(
        asset_key=PERSONA_HUB_DECISIONS,
        metadata={
            **table_write_metadata(writes[tables.PERSONA_HUB_DECISIONS]),
            "dropped_by_reason": summary["dropped_by_reason"],
        },
    )
    yield from reported(context, [hub, decisions])


def _build_shard(context, store, index, registry, shard, settings, embedder, run_id, writes) -> dict[str, int]:
    expected, present = prefix_shards(store, registry, shard)
    if len(present) < len(expected):
        context.log.warning(
            f"Shard {shard!r} is deduplicated against an incomplete prefix: "
            f"{sorted(set(expected) - set(present))} registered earlier have no hub yet."
        )
    counts, written = build_shard(
        store,
        index,
        shard,
        prefix=present,
        prefix_expected=expected,
        settings=settings,
        embedder=embedder,
        run_id=run_id,
        commit_metadata=commit_metadata(run_id, PERSONA_HUB),
    )
    writes.update(written)
    context.log.info(f"persona_hub {shard}: {counts}")
    return counts

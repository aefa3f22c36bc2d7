"""Persona search: the hub's personas nearest to a query, through the hub index's vectors (lib/dedup/index.py), with
their similarity, their cluster on the coverage map and the ids that lead back to their source."""

from __future__ import annotations

from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup.build import open_index
from persona_hub_dagster.lib.storage import DeltaStore

# persona_hub columns shown beside a result (those the hub has): where it came from, for `persona-hub trace`.
LINEAGE_COLUMNS = ("source", "text_id", "relation", "hop", "parent_persona_id")


class SearchError(ValueError):
    """The hub cannot answer this query (no index yet, another embedding model, a script the model cannot read)."""


def search(store: DeltaStore, query: str, embedder: Any, *, k: int = 10, shard: str | None = None) -> pl.DataFrame:
    """The k kept personas nearest to `query` (best first): rank, similarity, persona_id, persona, shard, cluster,
    cluster_label and the lineage columns the hub has."""
    why = embedder.unreadable([query])[0]
    if why:
        raise SearchError(f"the embedding model cannot read this query ({why}); configure a multilingual model")
    with open_index(store) as index:
        model = index.manifest.model
        if model is None:
            raise SearchError("the hub index holds no vectors yet: materialize persona_hub (with semantic dedup) first")
        if model != embedder.identity:
            raise SearchError(
                f"the hub's vectors are {model}, the configured embedding model is {embedder.identity}: set "
                "PERSONA_HUB_EMBEDDING_MODEL to the hub's model"
            )
        if shard is not None and shard not in index.manifest.shards:
            raise SearchError(f"shard {shard!r} is not in the hub index; its shards: {sorted(index.manifest.shards)}")
        found = index.nearest(embedder.encode([query]), k, [shard] if shard else None)[0]
    results = pl.DataFrame(
        {
            "rank": list(range(1, len(found) + 1)),
            "similarity": [round(n.similarity, 4) for n in found],
            "persona_id": [n.persona_id for n in found],
            "persona": [n.persona for n in found],
            "shard": [n.shard for n in found],
        },
        schema={
            "rank": pl.Int32,
            "similarity": pl.Float64,
            "persona_id": pl.String,
            "persona": pl.String,
            "shard": pl.String,
        },
    )
    ids, shards = results["persona_id"].implode(), sorted(set(results["shard"].to_list()))
    if shards and store.exists(tables.PERSONA_CLUSTERS):
        clusters = (
            store.scan(tables.PERSONA_CLUSTERS, shards)
            .filter(pl.col("persona_id").is_in(ids))
            .select("persona_id", "cluster", "cluster_label")
            .collect()
        )
        results = results.join(clusters, on="persona_id", how="left", maintain_order="left")
    if shards and store.exists(tables.PERSONA_HUB):
        hub = store.scan(tables.PERSONA_HUB, shards)
        present = [c for c in LINEAGE_COLUMNS if c in hub.collect_schema().names()]
        lineage = hub.filter(pl.col("persona_id").is_in(ids)).select("persona_id", *present).collect()
        results = results.join(lineage.unique("persona_id"), on="persona_id", how="left", maintain_order="left")
    return results

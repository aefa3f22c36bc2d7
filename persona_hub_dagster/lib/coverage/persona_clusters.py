"""persona_clusters: each shard's hub personas placed on the hub's coverage map (clustering.py), the clustering trained
on a sample of the whole hub when there is none or it no longer fits, and kept in `_index/persona_clusters/clusterings`
with every clustering before it.

Incremental: a new shard's personas are assigned to the existing clusters (one nearest-centroid search per persona);
reclustering reads a bounded sample of every hub shard (at most MAX_K x SAMPLE_PER_CLUSTER personas), never the
whole hub. Shards assigned under an earlier clustering keep their rows (their synthesis draws stay consistent within
the shard) and the `clustering_current` check names them, to be re-materialized when a person wants one map again.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.coverage import coverage_map
from persona_hub_dagster.lib.coverage.clustering import (
    SAMPLE_PER_CLUSTER,
    Assignment,
    Clustering,
    assign,
    choose_k,
    needs_reclustering,
    train,
)
from persona_hub_dagster.lib.embeddings import vector_array
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Markdown, Stage, StageCall, StageResult, StageWarning, same_columns
from persona_hub_dagster.lib.storage import DeltaStore

SCHEMA = {
    "shard": pl.String,
    "persona_id": pl.String,
    "cluster": pl.Int32,
    "cluster_label": pl.String,
    "region": pl.Int32,  # the cluster's region (a group of neighbouring clusters; a stratum is its own)
    "similarity": pl.Float32,  # cosine to the cluster's centroid; null for a script's stratum
    "clustering": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class ClusterSettings:
    clusters: int | None = setting(
        None, "k when the hub is (re)clustered; null: chosen for the hub's size (~sqrt(personas / 10), at most 256)."
    )
    recluster: bool = setting(False, "Cluster the whole hub again (from a sample of every shard) before assigning.")
    auto_recluster: bool = setting(
        True,
        "Recluster when the clustering no longer fits: the hub grew 4-fold since it was clustered, or over 25% of "
        "the shard's personas are less similar to their cluster than the least similar 5% of the clustered sample.",
    )
    seed: int = setting(0, "Seeds k-means and the hub sample it is trained on.")

    def __post_init__(self) -> None:
        if self.clusters is not None and self.clusters < 1:
            raise ValueError("clusters must be at least 1 (or null)")


# ---------------------------------------------------------------------------------------------------- vectors


def vectors_for(store: DeltaStore, shard: str, personas: pl.DataFrame, embedder: Any) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of the personas the embedding model reads, in order; which personas those are). The hub's stored
    vectors where it kept them under this model; otherwise (semantic dedup off, another model) the personas are
    embedded here."""
    ids = personas["persona_id"]
    stored = pl.DataFrame(schema={"persona_id": pl.String, "vector": pl.List(pl.Float32)})
    if store.exists(tables.HUB_EMBEDDINGS) and len(ids):
        stored = (
            store.scan(tables.HUB_EMBEDDINGS, [shard])
            .filter((pl.col("model") == embedder.identity) & pl.col("persona_id").is_in(ids.implode()))
            .select("persona_id", "vector")
            .collect()
        )
    if stored.height:
        placed = personas.select("persona_id").with_row_index("row").join(stored, on="persona_id", how="inner")
        placed = placed.sort("row")
        has_vector = np.zeros(len(ids), dtype=bool)
        has_vector[placed["row"].to_numpy()] = True
        return vector_array(placed["vector"]), has_vector
    texts = personas["persona"].to_list()
    has_vector = np.array([why is None for why in embedder.unreadable(texts)], dtype=bool)
    if not has_vector.any():  # nothing the model reads: it is never loaded
        return np.zeros((0, 0), dtype=np.float32), has_vector
    vectors = embedder.encode([t for t, read in zip(texts, has_vector.tolist(), strict=True) if read])
    return np.asarray(vectors, dtype=np.float32), has_vector


# ---------------------------------------------------------------------------------------------------- clusterings

CLUSTERINGS_SCHEMA = {
    "clustering": pl.String,
    "cluster": pl.Int32,
    "region": pl.Int32,
    "label": pl.String,
    "terms": pl.List(pl.String),
    "example": pl.String,
    "sample_size": pl.Int64,
    "centroid": pl.List(pl.Float32),
    "model": pl.String,
    "floor": pl.Float32,
    "trained_on": pl.Int64,
    "sample": pl.Int64,
    "reason": pl.String,
    "trained_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String,
}


def save_clustering(store: DeltaStore, clustering: Clustering, *, reason: str, run_id: str) -> None:
    """Appended to the clusterings table, one row per cluster (a stratum's centroid is null)."""
    per_cluster = {
        "cluster": clustering.clusters,
        "region": clustering.regions,
        "label": clustering.labels,
        "terms": clustering.terms,
        "example": clustering.examples,
        "sample_size": clustering.sizes,
        "centroid": [clustering.centroids[c].tolist() if c >= 0 else None for c in clustering.clusters],
    }
    shared = {
        "clustering": clustering.id,
        "model": clustering.model,
        "floor": clustering.floor,
        "trained_on": clustering.trained_on,
        "sample": clustering.sample,
        "reason": reason,
        "trained_at": datetime.now(UTC),
        "run_id": run_id,
    }
    frame = pl.DataFrame(per_cluster).with_columns(**{name: pl.lit(value) for name, value in shared.items()})
    store.append(tables.CLUSTERINGS, frame.select(list(CLUSTERINGS_SCHEMA)).cast(CLUSTERINGS_SCHEMA))


def load_clustering(store: DeltaStore, clustering_id: str | None = None) -> Clustering | None:
    """A clustering by id; without one, the latest."""
    if not store.exists(tables.CLUSTERINGS):
        return None
    frame = store.scan(tables.CLUSTERINGS)
    if clustering_id is None:
        latest = frame.sort("trained_at").select(pl.col("clustering").last()).collect().item()
        if latest is None:
            return None
        clustering_id = latest
    rows = frame.filter(pl.col("clustering") == clustering_id).collect().sort("cluster", descending=True)
    if not rows.height:
        return None
    proper = rows.filter(pl.col("cluster") >= 0).sort("cluster")
    strata = rows.filter(pl.col("cluster") < 0)
    ordered = pl.concat([proper, strata])
    centroids = vector_array(proper["centroid"]) if proper.height else np.zeros((0, 0), dtype=np.float32)
    first = rows.row(0, named=True)
    return Clustering(
        clustering_id,
        first["model"],
        centroids,
        ordered["cluster"].to_list(),
        ordered["label"].to_list(),
        ordered["terms"].to_list(),
        ordered["example"].to_list(),
        ordered["sample_size"].to_list(),
        ordered["region"].to_list(),
        float(first["floor"]),
        int(first["trained_on"]),
        int(first["sample"]),
    )


def cluster_table(clustering: Clustering, hub_personas: int) -> pl.DataFrame:
    """The clustering's clusters with their estimated personas in the hub: the cluster's share of the sample the
    clustering was trained on (a uniform sample of the hub) times the hub's size. Counting the hub's rows instead
    would read every shard's persona_clusters on every shard's run."""
    sampled = max(sum(clustering.sizes), 1)
    return pl.DataFrame(
        {
            "cluster": clustering.clusters,
            "region": clustering.regions,
            "label": clustering.labels,
            "example": clustering.examples,
            "personas": [round(size / sampled * hub_personas) for size in clustering.sizes],
        },
        schema={
            "cluster": pl.Int32,
            "region": pl.Int32,
            "label": pl.String,
            "example": pl.String,
            "personas": pl.Int64,
        },
    ).sort(["personas", "cluster"], descending=[True, False])


# ---------------------------------------------------------------------------------------------------- training


def hub_sample(
    store: DeltaStore, shard: str, own: pl.DataFrame, own_vectors: np.ndarray, own_has: np.ndarray, embedder, size: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """(vectors, their texts, texts without vectors) of a deterministic sample of about `size` personas of the whole
    hub, shard by shard (memory: one shard's personas and the sample). `own` is this run's shard, not yet written."""
    others = [s for s in store.partitions(tables.PERSONA_HUB) if s != shard]
    total = _hub_size(store, shard, own.height)
    share = min(1.0, size / max(total, 1))
    vectors, texts, unembedded = [], [], []
    for s in sorted([*others, shard]):
        if s == shard:
            take = _take(own.height, share, s)
            personas, shard_vectors, has = own.filter(pl.Series(take)), own_vectors[take[own_has]], own_has[take]
        else:
            personas = store.scan(tables.PERSONA_HUB, [s]).select("persona_id", "persona").collect()
            personas = personas.filter(pl.Series(_take(personas.height, share, s)))
            shard_vectors, has = vectors_for(store, s, personas, embedder)
        rows = personas["persona"].to_list()
        vectors.append(shard_vectors)
        texts.extend(t for t, h in zip(rows, has.tolist(), strict=True) if h)
        unembedded.extend(t for t, h in zip(rows, has.tolist(), strict=True) if not h)
    present = [v for v in vectors if len(v)]
    stacked = np.concatenate(present) if present else np.zeros((0, 0), dtype=np.float32)
    return stacked, texts, unembedded


def _hub_size(store: DeltaStore, shard: str, own: int) -> int:
    """The hub's personas with this shard's as this run has them (from the Delta log's statistics)."""
    if not store.exists(tables.PERSONA_HUB):
        return own
    return store.row_count(tables.PERSONA_HUB) - store.row_count(tables.PERSONA_HUB, [shard]) + own


def _take(n: int, share: float, shard: str) -> np.ndarray:
    from persona_hub_dagster.lib.ids import content_id

    if share >= 1:
        return np.ones(n, dtype=bool)
    return np.random.default_rng(int(content_id(shard)[:8], 16)).random(n) < share


# ---------------------------------------------------------------------------------------------------- the stage


def place_shard(
    store: DeltaStore, shard: str, hub: pl.DataFrame, embedder: Any, settings: ClusterSettings, run_id: str
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The shard's persona_clusters rows and what to report: the clustering (trained first when due), the shard's
    clusters, the hub's (estimated from the clustering's sample), the map."""
    vectors, has_vector = vectors_for(store, shard, hub, embedder)
    texts = hub["persona"].to_list()
    current = load_clustering(store)
    hub_personas = _hub_size(store, shard, hub.height)
    reason = "asked (recluster: true)" if settings.recluster else None
    if current is None or current.model != embedder.identity:
        reason = needs_reclustering(current, model=embedder.identity, hub_personas=hub_personas)
    assignment: Assignment | None = None
    if reason is None:
        assert current is not None
        assignment = assign(current, vectors, has_vector, texts)
        if settings.auto_recluster:
            reason = needs_reclustering(
                current, model=embedder.identity, hub_personas=hub_personas, assignment=assignment
            )
    if reason is not None:
        k = settings.clusters or choose_k(hub_personas)
        sample = hub_sample(store, shard, hub, vectors, has_vector, embedder, k * SAMPLE_PER_CLUSTER)
        current = train(*sample, model=embedder.identity, trained_on=hub_personas, k=k, seed=settings.seed)
        save_clustering(store, current, reason=reason, run_id=run_id)
        assignment = assign(current, vectors, has_vector, texts)
    assert current is not None and assignment is not None
    rows = pl.DataFrame(
        {
            "shard": [shard] * hub.height,
            "persona_id": hub["persona_id"],
            "cluster": assignment.cluster,
            "cluster_label": [current.label_of(int(c)) for c in assignment.cluster.tolist()],
            "region": [current.region_of(int(c)) for c in assignment.cluster.tolist()],
            "similarity": assignment.similarity,
            "clustering": [current.id] * hub.height,
            "run_id": [run_id] * hub.height,
        },
        schema=SCHEMA,
    ).with_columns(pl.col("similarity").fill_nan(None))
    return rows, _report(store, shard, current, rows, assignment, vectors, reason, hub_personas)


def _report(store, shard, clustering, rows, assignment, vectors, reason, hub_personas) -> dict[str, Any]:
    elsewhere = pl.DataFrame(schema={"shard": pl.String, "clustering": pl.String})
    if store.exists(tables.PERSONA_CLUSTERS):
        elsewhere = (
            store.scan(tables.PERSONA_CLUSTERS)
            .filter(pl.col("shard") != shard)
            .select("shard", "clustering")
            .unique()
            .collect()
        )
    stale = sorted(set(elsewhere.filter(pl.col("clustering") != clustering.id)["shard"].to_list()))
    own = rows.group_by("cluster").agg(shard_personas=pl.len())
    table = cluster_table(clustering, hub_personas).join(own, on="cluster", how="left", maintain_order="left")
    hub_sizes = dict(zip(table["cluster"].to_list(), table["personas"].to_list(), strict=True))
    png = coverage_map.render(
        clustering,
        hub_sizes,
        vectors,
        assignment.cluster[assignment.cluster >= 0] if clustering.k else assignment.cluster[:0],
        f"persona hub coverage: ~{sum(hub_sizes.values()):,} personas in {len(hub_sizes)} clusters "
        f"(clustering {clustering.id}); points: shard {shard}",
    )
    map_uri = filesystems.write_bytes(f"{store.table_uri(tables.COVERAGE_MAPS_PATH)}/{clustering.id}/{shard}.png", png)
    lines = [
        "| cluster | region | label | personas in hub (est.) | in this shard | example |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for row in table.iter_rows(named=True):
        example = (row["example"] or "").replace("|", "/").replace("\n", " ")
        cells = [row["cluster"], row["region"], row["label"], row["personas"], row["shard_personas"] or 0, example]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return {
        "clustering": clustering.id,
        "clusters": clustering.k,
        "strata": len(clustering.clusters) - clustering.k,
        "regions": len(set(clustering.regions)) - (len(clustering.clusters) - clustering.k),
        "reclustered": reason or "no",
        "outlier_share": round(assignment.outlier_share, 4),
        "shard_clusters": rows["cluster"].n_unique(),
        "shards_on_older_clusterings": stale,
        "coverage_map": Markdown(
            f"![coverage map](data:image/png;base64,{base64.b64encode(png).decode()})\n\n{map_uri}"
        ),
        "map_uri": map_uri,
        "hub_clusters": Markdown("\n".join(lines)),
    }


def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: ClusterSettings) -> StageResult:
    hub = inputs[tables.PERSONA_HUB].select("persona_id", "persona").collect()
    assert call.shard is not None
    rows, metadata = place_shard(call.store, call.shard, hub, call.embedder, settings, call.run_id)
    return StageResult({tables.PERSONA_CLUSTERS: rows}, metadata)


def _older(metadata: Mapping[str, Any]) -> str | None:
    stale = metadata.get("shards_on_older_clusterings") or []
    if not stale:
        return None
    return (
        f"{len(stale)} shard(s) were assigned under an earlier clustering ({', '.join(stale[:10])}); materialize "
        "persona_clusters for them to put the whole hub on one map."
    )


STAGE = Stage(
    writes=tables.COVERAGE,
    op="cluster_personas",
    settings=ClusterSettings,
    run=run,
    prompts=lambda settings: ["kmeans-ctfidf.v1"],
    samplings=lambda settings: [],
    version_extra=lambda settings: (settings.clusters, settings.seed),
    reads=(tables.PERSONA_HUB,),
    resources=("embeddings",),
    lineage=same_columns(tables.PERSONA_HUB, "persona_id"),
    warnings=(
        StageWarning(
            "clustering_current",
            "Warns when some shards were assigned under an earlier clustering of the hub than this shard.",
            _older,
        ),
    ),
)

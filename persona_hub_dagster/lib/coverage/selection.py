"""Which of a shard's hub personas a synthesis task draws: aimed (a semantic query, clusters of the coverage map,
filters on hub columns) and spread (evenly across clusters, or uniformly).

Every draw is deterministic: a persona's place in its cluster, and a cluster's or region's place in the round, is a
stable hash of the seed and its id, so the same settings pick the same personas on every machine. A stratified draw
takes one persona from every region in turn (round-robin), and within a region from each of its clusters in turn,
until it has enough: a region of a hundred personas and one of ten thousand give the same number while both last, so
the rare kinds of people the hub holds are reached, not only its densest parts. (Regions, not clusters: k-means
gives a dense kind of people more clusters, in proportion, so turns over clusters alone follow the density; see
clustering.group_into_regions.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from persona_hub_dagster.lib.ids import stable_rank

SAMPLING_MODES = ("stratified", "uniform")


@dataclass(frozen=True)
class Aim:
    """What to draw from: the subset of the hub (query, clusters, filters) and how to spread the draw."""

    personas: int | None
    seed: int = 0
    sampling: str = "stratified"
    query: str | None = None
    min_similarity: float | None = None  # None: the embedding model's own (lib/embeddings.py QUERY_THRESHOLDS)
    clusters: tuple[int, ...] = ()
    where: tuple[str, ...] = ()


@dataclass
class Drawn:
    """The drawn personas (persona_id, persona, cluster, cluster_label, query_similarity) and what the draw was."""

    personas: pl.DataFrame
    eligible: int
    hub: int
    mode: str
    notes: list[str] = field(default_factory=list)

    def composition(self) -> dict[str, Any]:
        """What the metadata and the eval report show: how many personas, from how many of the hub's, per cluster
        ("<id>: <label>") and per region."""
        named = self.personas.select(
            pl.when(pl.col("cluster").is_null())
            .then(pl.lit("(no cluster)"))
            .otherwise(pl.col("cluster").cast(pl.String) + ": " + pl.col("cluster_label"))
        ).to_series()
        counts = Counter(named.to_list())
        regions = Counter(self.personas["region"].drop_nulls().to_list())
        return {
            "mode": self.mode,
            "drawn": self.personas.height,
            "eligible": self.eligible,
            "hub": self.hub,
            "clusters_drawn": len(counts),
            "regions_drawn": len(regions),
            "cluster_entropy_bits": round(entropy(list(counts.values())), 4),
            "region_entropy_bits": round(entropy(list(regions.values())), 4),
            "per_cluster": dict(counts.most_common()),
            "notes": self.notes,
        }


def entropy(counts: Sequence[int]) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c) if total else 0.0


def parse_where(where: Sequence[str]) -> list[tuple[str, bool, list[str]]]:
    """Filters "column=value", "column=v1|v2" (any of) and "column!=value" as (column, negated, values)."""
    parsed = []
    for clause in where:
        negated = "!=" in clause
        column, sep, values = clause.partition("!=" if negated else "=")
        if not sep or not column.strip():
            raise ValueError(f"a filter is 'column=value', 'column=v1|v2' or 'column!=value', not {clause!r}")
        parsed.append((column.strip(), negated, [v.strip() for v in values.split("|")]))
    return parsed


def filtered(hub: pl.DataFrame, where: Sequence[str]) -> pl.DataFrame:
    for column, negated, values in parse_where(where):
        if column not in hub.columns:
            raise ValueError(f"persona_hub has no column {column!r} to filter on; it has {', '.join(hub.columns)}")
        match = pl.col(column).cast(pl.String).is_in(values).fill_null(False)
        hub = hub.filter(~match if negated else match)
    return hub


def draw(
    hub: pl.DataFrame,
    aim: Aim,
    clusters: pl.DataFrame | None,
    query_similarity: np.ndarray | None = None,
) -> Drawn:
    """The personas of `hub` (persona_id, persona and its other columns) that `aim` draws. `clusters`: the shard's
    persona_clusters rows (None: not clustered); `query_similarity`: per hub row its cosine to the query (NaN where the
    persona has no embedding), needed when the aim has a query."""
    notes: list[str] = []
    total = hub.select(pl.col("persona_id").n_unique()).item()
    frame = (
        hub.with_columns(query_similarity=pl.Series(query_similarity, dtype=pl.Float32).fill_nan(None))
        if (query_similarity is not None)
        else hub.with_columns(query_similarity=pl.lit(None, dtype=pl.Float32))
    )
    frame = frame.unique("persona_id", keep="first", maintain_order=True)
    if clusters is not None:
        if "region" not in clusters.columns:  # rows written before regions: each cluster its own
            clusters = clusters.with_columns(region=pl.col("cluster"))
        frame = frame.join(
            clusters.select("persona_id", "cluster", "cluster_label", "region"), on="persona_id", how="left"
        )
        missing = frame["cluster"].null_count()
        if missing:
            notes.append(f"{missing} personas have no persona_clusters row (re-materialize persona_clusters)")
    else:
        frame = frame.with_columns(
            cluster=pl.lit(None, dtype=pl.Int32),
            cluster_label=pl.lit(None, dtype=pl.String),
            region=pl.lit(None, dtype=pl.Int32),
        )
    frame = filtered(frame, aim.where)
    if aim.clusters:
        if clusters is None:
            raise ValueError("`clusters` needs persona_clusters for the shard: materialize persona_clusters first")
        frame = frame.filter(pl.col("cluster").is_in(list(aim.clusters)))
    if aim.query:
        if query_similarity is None:
            raise ValueError("a query needs the personas' similarity to it")
        unembedded = frame["query_similarity"].null_count()
        if unembedded:
            notes.append(f"{unembedded} personas in scripts the embedding model cannot read cannot match the query")
        if aim.min_similarity is None:
            raise ValueError("a query needs a min_similarity (draw_personas gives the embedding model's own)")
        frame = frame.filter(pl.col("query_similarity") >= aim.min_similarity)
        notes.append(f"query {aim.query!r} at min_similarity {aim.min_similarity}")
    eligible = frame.height
    mode = aim.sampling
    if mode == "stratified" and clusters is None:
        mode = "uniform"
        notes.append("uniform: the shard has no persona_clusters yet, so there are no clusters to spread over")
    ranked = frame.with_columns(
        rank=pl.Series([stable_rank(aim.seed, p) for p in frame["persona_id"]], dtype=pl.String)
    )
    if mode == "stratified":
        ranked = _round_robin(ranked, aim.seed)
    else:
        ranked = ranked.sort("rank")
    if aim.personas is not None:
        ranked = ranked.head(aim.personas)
    return Drawn(ranked.drop("rank"), eligible, total, mode, notes)


def _round_robin(ranked: pl.DataFrame, seed: int) -> pl.DataFrame:
    """`ranked` (a stable `rank` per persona) in stratified order: turn by turn across regions, and within a region
    turn by turn across its clusters; personas without a cluster form one group of their own."""

    def order_of(column: str) -> pl.Expr:  # one hash per cluster or region, not per persona
        order = {v: stable_rank(seed, column, v) for v in ranked[column].drop_nulls().unique().to_list()}
        return pl.col(column).replace_strict(order, default=None, return_dtype=pl.String)

    return (
        ranked.with_columns(
            in_cluster=pl.col("rank").rank("ordinal").over("cluster"), cluster_order=order_of("cluster")
        )
        .sort(["in_cluster", "cluster_order", "rank"], nulls_last=True)
        .with_columns(in_region=pl.int_range(pl.len()).over("region"), region_order=order_of("region"))
        .sort(["in_region", "region_order"], nulls_last=True, maintain_order=True)
        .drop("in_cluster", "cluster_order", "in_region", "region_order")
    )


def aim_of(settings: Any) -> Aim:
    """The Aim of a synthesis task's settings (SynthesisSettings and its subclasses)."""
    return Aim(
        personas=settings.personas,
        seed=settings.seed,
        sampling=settings.sampling,
        query=settings.query,
        min_similarity=settings.min_similarity,
        clusters=tuple(settings.clusters),
        where=tuple(settings.where),
    )


def check_aim(values: Mapping[str, Any]) -> None:
    """The settings' own validation (SynthesisSettings.__post_init__)."""
    if values["sampling"] not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, not {values['sampling']!r}")
    if values["min_similarity"] is not None and not -1.0 <= values["min_similarity"] <= 1.0:
        raise ValueError("min_similarity is a cosine: between -1 and 1")
    parse_where(values["where"])

"""The set properties every evaluation adds to its rows and metadata: near-duplicates, persona grounding and
benchmark contamination per item, and the shard's diversity and grounding summary (see diversity.py and
contamination.py for the measures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from persona_hub_dagster.lib.evaluation import contamination, diversity

PROPERTY_COLUMNS = {
    "duplicate_of": pl.String,  # an earlier item of the shard this one nearly duplicates (a release drops it)
    "duplicate_by": pl.String,  # minhash | embedding
    "persona_similarity": pl.Float32,  # cosine of the item and its own persona
    "other_persona_similarity": pl.Float32,  # ... and another persona of the shard
    "contaminated": pl.Boolean,  # null: not checked (no benchmark configured)
    "contamination_benchmark": pl.String,
    "contamination_index": pl.Int64,  # the matched record's index in the benchmark file
    "contamination_method": pl.String,  # ngram13 | embedding
    "contamination_score": pl.Float64,
    "contamination_evidence": pl.String,
}


@dataclass
class SetProperties:
    per_item: pl.DataFrame  # item_id + PROPERTY_COLUMNS
    metrics: dict[str, Any] = field(default_factory=dict)


def set_properties(
    item_ids: Sequence[str],
    texts: Sequence[str],
    persona_ids: Sequence[str],
    personas: Sequence[str],
    *,
    embedder=None,
    benchmarks: Sequence[contamination.Benchmark] = (),
    seed: int = 0,
) -> SetProperties:
    """`personas[i]` is the text of item i's persona. Without an embedder, the embedding measures are left out."""
    n = len(item_ids)
    item_vectors = persona_vectors = None
    if embedder is not None and n:
        item_vectors = embedder.encode(list(texts))
        distinct_personas = sorted(set(personas))
        encoded = embedder.encode(distinct_personas)
        row = {p: i for i, p in enumerate(distinct_personas)}
        persona_vectors = encoded[[row[p] for p in personas]]
    dups = diversity.near_duplicates(texts, item_vectors)
    duplicate_of = dups.duplicate_of
    ids = np.asarray(item_ids, dtype=object)
    columns: dict[str, Any] = {
        "item_id": list(item_ids),
        "duplicate_of": [ids[d] if d >= 0 else None for d in duplicate_of],
        "duplicate_by": [
            "minhash" if m >= 0 else "embedding" if e >= 0 else None
            for m, e in zip(dups.minhash_of, dups.embedding_of, strict=True)
        ],
    }
    metrics: dict[str, Any] = {
        "items": n,
        "distinct_1": diversity.distinct_n(texts, 1),
        "distinct_2": diversity.distinct_n(texts, 2),
        "minhash_duplicate_rate": dups.minhash_rate,
    }
    if item_vectors is not None:
        grounded = diversity.grounding(item_vectors, persona_vectors, persona_ids, seed)
        columns["persona_similarity"] = grounded.own.astype(np.float32)
        columns["other_persona_similarity"] = grounded.other.astype(np.float32)
        curve = diversity.similarity_curve(item_vectors, persona_vectors, seed=seed)
        metrics |= {
            "embedding_duplicate_rate": dups.embedding_rate,
            "mean_pairwise_distance": diversity.mean_pairwise_distance(item_vectors, seed=seed),
            "persona_similarity": round(float(np.mean(grounded.own)), 4),
            "other_persona_similarity": round(float(np.nanmean(grounded.other)), 4)
            if np.isfinite(grounded.other).any()
            else None,
            "persona_lift": grounded.lift,
            "similarity_curve": curve.to_dicts(),
        }
    flags = _contamination(texts, benchmarks, embedder)
    columns.update(_first_flag(n, flags, checked=bool(benchmarks)))
    metrics["contamination"] = (
        {"checked": [b.name for b in benchmarks], "contaminated": int(flags["item_index"].n_unique())}
        if benchmarks
        else {"checked": "not checked (no benchmark configured)"}
    )
    schema = {"item_id": pl.String, **{c: PROPERTY_COLUMNS[c] for c in columns if c != "item_id"}}
    frame = pl.DataFrame(columns, schema=schema).with_columns(
        *[pl.lit(None, dtype=dtype).alias(name) for name, dtype in PROPERTY_COLUMNS.items() if name not in columns]
    )
    return SetProperties(frame.select("item_id", *[pl.col(c).cast(t) for c, t in PROPERTY_COLUMNS.items()]), metrics)


def _contamination(texts, benchmarks, embedder) -> pl.DataFrame:
    if not benchmarks or not len(texts):
        return pl.DataFrame(schema=contamination.FLAG_SCHEMA)
    encode = embedder.encode if embedder is not None else None
    return contamination.contamination(texts, benchmarks, encode=encode)


def _first_flag(n: int, flags: pl.DataFrame, *, checked: bool) -> dict[str, list]:
    """Per item: its strongest flag (n-gram first, then the highest score)."""
    empty = {c: [None] * n for c in PROPERTY_COLUMNS if c.startswith("contamination_")}
    if not checked:
        return {"contaminated": [None] * n, **empty}
    best = flags.sort(["item_index", "method", "score"], descending=[False, True, True]).unique(
        "item_index", keep="first", maintain_order=True
    )
    columns = {"contaminated": [False] * n, **empty}
    for row in best.iter_rows(named=True):
        i = row["item_index"]
        columns["contaminated"][i] = True
        columns["contamination_benchmark"][i] = row["benchmark"]
        columns["contamination_index"][i] = row["benchmark_index"]
        columns["contamination_method"][i] = row["method"]
        columns["contamination_score"][i] = row["score"]
        columns["contamination_evidence"][i] = row["evidence"]
    return columns

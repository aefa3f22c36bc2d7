"""Properties of a whole set of synthetic items: how diverse it is, and whether the personas steered it.

Diversity
- distinct-1 / distinct-2: distinct word unigrams / bigrams over all unigrams / bigrams of the items (Li et al.).
- near-duplicates: MinHash at Jaccard 0.9 with the project's dedup engine (exact-verified, keep-first), and embedding
  cosine >= 0.9 (keep-first); each flagged item names the earlier item it duplicates (`duplicate_of`).
- mean pairwise embedding distance (1 - cosine) over a seeded sample of items.

Persona grounding
- lift: each item's cosine to its own persona over its cosine to another persona of the set (a seeded derangement).
  Above 1, the persona steered the output; about 1, the output ignores who it was written for.
- the paper's analysis (its Figure "similarity of personas vs. of their outputs"): for pairs of items, their
  personas' cosine binned, and the mean cosine of the items in each bin. The curve rises with persona similarity and
  stays below the diagonal when the outputs are more diverse than the personas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from persona_hub_dagster.lib.dedup.minhash import minhash_clusters
from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first
from persona_hub_dagster.lib.evaluation.contamination import words

NEAR_DUPLICATE = 0.9  # the paper's dedup threshold, for MinHash Jaccard and embedding cosine alike
CURVE_BINS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all word n-grams of the texts (0 when there are none)."""
    tokens = words(texts)
    grams = (
        tokens.to_frame("t")
        .with_row_index("text")
        .explode("t")
        .drop_nulls()
        .with_columns(pos=pl.int_range(pl.len()).over("text"))
    )
    if n > 1:
        shifted = [pl.col("t").shift(-k).over("text") for k in range(1, n)]
        grams = grams.with_columns(gram=pl.concat_str([pl.col("t"), *shifted], separator=" ")).drop_nulls("gram")
    else:
        grams = grams.with_columns(gram=pl.col("t"))
    total = grams.height
    return round(grams["gram"].n_unique() / total, 4) if total else 0.0


@dataclass(frozen=True)
class NearDuplicates:
    """`*_of`: per item, the earlier kept item it duplicates (keep-first: what a release drops), or -1. `*_rate`: the
    share of items that have a near-duplicate in the set at all (both members of a pair count: identical items
    give 1.0)."""

    minhash_of: np.ndarray  # per item: the earlier item it duplicates by MinHash, or -1
    embedding_of: np.ndarray  # per item: ... by embedding cosine, or -1
    minhash_rate: float
    embedding_rate: float

    @property
    def duplicate_of(self) -> np.ndarray:
        """Per item: the earlier item it duplicates by either measure (MinHash first), or -1."""
        return np.where(self.minhash_of >= 0, self.minhash_of, self.embedding_of)


def near_duplicates(
    texts: Sequence[str], vectors: np.ndarray | None, threshold: float = NEAR_DUPLICATE
) -> NearDuplicates:
    n = len(texts)
    own = np.arange(n)
    minhash = minhash_clusters(texts, threshold=threshold).representative if n else own
    minhash_of = np.where(minhash != own, minhash, -1)
    embedding_of = np.full(n, -1)
    if vectors is not None and n:
        representative = semantic_keep_first(vectors, threshold=threshold).representative
        embedding_of = np.where(representative != own, representative, -1)
    return NearDuplicates(
        minhash_of,
        embedding_of,
        _involved_rate(minhash_of),
        _involved_rate(embedding_of) if vectors is not None else 0.0,
    )


def _involved_rate(duplicate_of: np.ndarray) -> float:
    """Share of items that duplicate another or are duplicated by one."""
    n = len(duplicate_of)
    if not n:
        return 0.0
    involved = duplicate_of >= 0
    involved[duplicate_of[duplicate_of >= 0]] = True
    return round(float(involved.mean()), 4)


def mean_pairwise_distance(vectors: np.ndarray, *, sample: int = 2000, seed: int = 0) -> float:
    """Mean 1 - cosine over all distinct pairs of a seeded sample of at most `sample` vectors."""
    n = len(vectors)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    chosen = vectors[rng.choice(n, size=min(n, sample), replace=False)].astype(np.float64)
    m = len(chosen)
    total = chosen.sum(axis=0)
    # Sum of all pairwise dot products from the sum vector: sum_{i != j} v_i.v_j = |sum v|^2 - sum |v_i|^2.
    off_diagonal = float(total @ total) - float((chosen * chosen).sum())
    return round(1.0 - off_diagonal / (m * (m - 1)), 4)


def other_persona(persona_ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """For each item, the index of an item whose persona is different: a seeded shuffle, each item paired with the
    next item in it whose persona differs (vectorized: each round resolves every item whose candidate fits); -1 when
    every item has the same persona."""
    codes = np.unique(np.asarray(persona_ids, dtype=object), return_inverse=True)[1]
    n = len(codes)
    result = np.full(n, -1, dtype=np.int64)
    if n < 2 or codes.min() == codes.max():
        return result
    order = np.random.default_rng(seed).permutation(n)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    pending = np.arange(n)
    for step in range(1, n):
        candidates = order[(position[pending] + step) % n]
        fits = codes[candidates] != codes[pending]
        result[pending[fits]] = candidates[fits]
        pending = pending[~fits]
        if not len(pending):
            break
    return result


@dataclass(frozen=True)
class Grounding:
    own: np.ndarray  # per item: cosine to its own persona
    other: np.ndarray  # per item: cosine to another item's persona (nan when there is none)

    @property
    def lift(self) -> float:
        other = np.nanmean(self.other) if np.isfinite(self.other).any() else np.nan
        return round(float(np.mean(self.own) / other), 4) if len(self.own) and other and np.isfinite(other) else 0.0


def grounding(
    item_vectors: np.ndarray, persona_vectors: np.ndarray, persona_ids: Sequence[str], seed: int = 0
) -> Grounding:
    """`persona_vectors[i]` is item i's persona."""
    own = np.einsum("ij,ij->i", item_vectors, persona_vectors)
    others = other_persona(persona_ids, seed)
    other = np.full(len(own), np.nan)
    valid = others >= 0
    other[valid] = np.einsum("ij,ij->i", item_vectors[valid], persona_vectors[others[valid]])
    return Grounding(own, other)


def similarity_curve(
    item_vectors: np.ndarray,
    persona_vectors: np.ndarray,
    *,
    pairs: int = 20_000,
    seed: int = 0,
    bins: Sequence[float] = CURVE_BINS,
) -> pl.DataFrame:
    """Pairs of items (seeded sample) binned by their personas' cosine: per bin, the pairs, the mean persona cosine
    and the mean item cosine."""
    n = len(item_vectors)
    schema = {"bin": pl.String, "pairs": pl.Int64, "persona_similarity": pl.Float64, "item_similarity": pl.Float64}
    if n < 2:
        return pl.DataFrame(schema=schema)
    rng = np.random.default_rng(seed)
    left, right = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    keep = left != right
    left, right = left[keep], right[keep]
    persona_sim = np.einsum("ij,ij->i", persona_vectors[left], persona_vectors[right])
    item_sim = np.einsum("ij,ij->i", item_vectors[left], item_vectors[right])
    which = np.clip(np.digitize(persona_sim, bins) - 1, 0, len(bins) - 2)
    rows = []
    for b in range(len(bins) - 1):
        chosen = which == b
        if chosen.any():
            rows.append(
                {
                    "bin": f"{bins[b]:.1f}-{min(bins[b + 1], 1.0):.1f}",
                    "pairs": int(chosen.sum()),
                    "persona_similarity": round(float(persona_sim[chosen].mean()), 4),
                    "item_similarity": round(float(item_sim[chosen].mean()), 4),
                }
            )
    return pl.DataFrame(rows, schema=schema)

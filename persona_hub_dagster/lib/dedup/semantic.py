"""Semantic deduplication on L2-normalized embeddings (cosine = inner product), keep-first, with FAISS.

Rule: vectors are taken in input order (after any `prior` vectors, e.g. the kept personas of earlier shards); a
vector is dropped when some already-kept vector has cosine >= threshold with it, and its representative is the
earliest such kept vector. So:
- the two members of a duplicate pair are never both dropped (the representative is kept by construction);
- a vector is never compared with itself: the kept-set index only holds vectors decided before it (no positional
  self-match removal that exact duplicates could confuse);
- any threshold works, down to 0.5: each query asks the index for *every* kept vector above the threshold (FAISS
  range search), not for a k-nearest list that runs out before low thresholds (k-NN lists miss neighbours below
  ~0.7 on persona embeddings).

Index: exact inner product (IndexFlatIP) up to `flat_limit` vectors; above it an inverted-file index (IVF, about
one list per 200 vectors, `nprobe` lists probed per query), trained once on a sample, to which kept vectors are
added as they are decided. Queries go in chunks (memory bounded by the chunk and its results), and duplicates inside
a chunk are resolved with the chunk's own similarity matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_CHUNK = 2048
FLAT_LIMIT = 100_000
VECTORS_PER_LIST = 200


@dataclass
class SemanticResult:
    representative: np.ndarray  # per vector: its own index if kept or matched a prior vector; else the kept one
    prior_match: np.ndarray  # per vector: index into `prior` of its representative, or -1
    similarity: np.ndarray  # cosine with the representative (1.0 for kept vectors)
    index: str  # the FAISS index used, for the record

    @property
    def kept(self) -> np.ndarray:
        return (self.representative == np.arange(len(self.representative))) & (self.prior_match < 0)


def semantic_dedup(embeddings: np.ndarray, *, threshold: float = 0.9) -> list[int]:
    """For each vector, the index of the earlier kept vector it duplicates (cosine >= threshold), or its own index."""
    return semantic_keep_first(embeddings, threshold=threshold).representative.tolist()


def semantic_keep_first(
    vectors: np.ndarray,
    *,
    threshold: float = 0.9,
    prior: np.ndarray | None = None,
    chunk: int = DEFAULT_CHUNK,
    flat_limit: int = FLAT_LIMIT,
    nprobe: int = 16,
    threads: int | None = None,
) -> SemanticResult:
    import faiss

    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    vectors = _as_float32(vectors)
    n, dim = vectors.shape
    prior = _as_float32(prior) if prior is not None else np.zeros((0, dim), dtype=np.float32)
    total = n + len(prior)
    index, kind = _new_index(faiss, dim, total, flat_limit, nprobe, np.concatenate((prior, vectors)))
    # The index holds prior vectors as ids 0..P-1 and kept batch vectors as ids P + i.
    if len(prior):
        _add(index, prior, np.arange(len(prior), dtype=np.int64))

    representative = np.arange(n)
    prior_match = np.full(n, -1, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    p = len(prior)
    for start in range(0, n, chunk):
        block = vectors[start : start + chunk]
        size = len(block)
        best_id = np.full(size, -1, dtype=np.int64)
        best_sim = np.zeros(size, dtype=np.float32)
        if index.ntotal:
            # Range search returns every indexed vector with inner product > radius; the earliest id wins.
            limits, distances, ids = index.range_search(block, np.float32(np.nextafter(threshold, -1)))
            for q in range(size):
                lo, hi = limits[q], limits[q + 1]
                if hi > lo:
                    hits = ids[lo:hi]
                    sims = distances[lo:hi]
                    ok = sims >= threshold
                    if ok.any():
                        k = int(np.argmin(np.where(ok, hits, np.iinfo(np.int64).max)))
                        best_id[q], best_sim[q] = hits[k], sims[k]
        # Within the chunk: in order, against the chunk's earlier vectors that were kept.
        gram = block @ block.T
        undecided = best_id < 0
        kept_in_chunk = np.zeros(size, dtype=bool)
        for q in range(size):
            if not undecided[q]:
                continue
            earlier = np.flatnonzero(kept_in_chunk[:q] & (gram[q, :q] >= threshold))
            if len(earlier):
                best_id[q], best_sim[q] = p + start + earlier[0], gram[q, earlier[0]]
            else:
                kept_in_chunk[q] = True
        for q in np.flatnonzero(~kept_in_chunk):
            matched = int(best_id[q])
            if matched < p:
                prior_match[start + q] = matched
            else:
                representative[start + q] = matched - p
            similarity[start + q] = best_sim[q]
        keep = np.flatnonzero(kept_in_chunk)
        if len(keep):
            _add(index, block[keep], (p + start + keep).astype(np.int64))
    return SemanticResult(representative, prior_match, similarity, kind)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {vectors.shape}")
    return vectors


def _new_index(faiss, dim: int, total: int, flat_limit: int, nprobe: int, sample_from: np.ndarray):
    if total <= flat_limit:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), "IndexFlatIP (exact)"
    nlist = max(1, total // VECTORS_PER_LIST)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample_size = min(len(sample_from), max(nlist * 39, 50_000))
    sample = sample_from[rng.choice(len(sample_from), sample_size, replace=False)]
    index.cp.max_points_per_centroid = 64  # bounded training cost; enough points for coarse lists
    index.train(sample)
    index.nprobe = min(nprobe, nlist)
    return index, f"IndexIVFFlat(nlist={nlist}, nprobe={index.nprobe})"


def _add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(vectors, ids)

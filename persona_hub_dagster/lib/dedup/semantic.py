"""Semantic deduplication on L2-normalized embeddings (cosine = inner product): keep-first, any threshold.

Rule: vectors are taken in input order, after any `prior` vectors (e.g. the kept personas of earlier shards); a
vector is dropped when an already-kept vector has cosine >= threshold with it, and its representative is the
earliest such kept vector. So:
- the two members of a duplicate pair are never both dropped (the representative is kept by construction);
- a vector is never compared with itself: it is only compared with vectors decided before it (no positional
  self-match removal that exact duplicates could confuse);
- any threshold works, down to 0.5: every kept vector above the threshold counts, not a k-nearest list that runs
  out before low thresholds (k-NN lists miss neighbours below ~0.7 on persona embeddings).

How: an inverted file. Centroids come from FAISS k-means (spherical) on a sample; every kept vector is filed under
its nearest centroid, and a query is compared with the vectors filed under its `nprobe` nearest centroids (with one
list, the search is exact). Queries go in chunks, and instead of scanning lists query by query (FAISS's IVF scan,
measured at ~5 GFLOP/s here), each list is compared with all of the chunk's queries that probe it in one matrix
product (BLAS), together with the chunk's own vectors filed under that list, which resolves duplicates inside the
chunk the same way. Measured 2-3x faster than FAISS IndexIVFFlat.range_search on the same lists (bench/RESULTS.md).
Memory: the kept vectors, plus one chunk's similarity blocks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

# Queries per chunk: with one list the chunk's own similarity block is chunk x chunk (2048: 16 MB); with many lists
# the blocks are per list and small, and a bigger chunk means fewer, larger matrix products.
EXACT_CHUNK, IVF_CHUNK = 2048, 8192
EXACT_LIMIT = 50_000  # up to this many vectors (batch + prior): one list, i.e. exact search
DEFAULT_NPROBE = 16
_NONE = np.iinfo(np.int64).max


@dataclass
class SemanticResult:
    representative: np.ndarray  # per vector: its own index if kept or matched a prior vector; else the kept one
    prior_match: np.ndarray  # per vector: index into `prior` of its representative, or -1
    similarity: np.ndarray  # cosine with the representative (1.0 for kept vectors)
    index: str  # how the search was done, for the record

    @property
    def kept(self) -> np.ndarray:
        return (self.representative == np.arange(len(self.representative))) & (self.prior_match < 0)


def choose_lists(total: int, exact_limit: int = EXACT_LIMIT) -> int:
    """1 (exact) for small inputs; else ~2 sqrt(N) lists: 2,000 for 10^6 vectors, trained in seconds on 2 cores."""
    return 1 if total <= exact_limit else int(2 * math.sqrt(total))


def semantic_keep_first(
    vectors: np.ndarray,
    *,
    threshold: float = 0.9,
    prior: np.ndarray | None = None,
    chunk: int | None = None,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    threads: int | None = None,
) -> SemanticResult:
    vectors = _as_float32(vectors)
    n, dim = vectors.shape
    prior = _as_float32(prior) if prior is not None and len(prior) else np.zeros((0, dim), dtype=np.float32)
    p = len(prior)
    everything = np.concatenate((prior, vectors)) if p else vectors
    nlist = nlist or choose_lists(len(everything))
    chunk = chunk or (EXACT_CHUNK if nlist == 1 else IVF_CHUNK)
    lists = _InvertedLists(_centroids(everything, nlist, threads), dim, nprobe)

    # Ids: prior vectors are 0..P-1, batch vectors P + i. Prior vectors are all kept, so they go straight in.
    if p:
        lists.add(np.arange(p, dtype=np.int64), prior, lists.probe(prior)[:, 0])
    representative = np.arange(n)
    matched = np.full(n, _NONE, dtype=np.int64)  # the representative's id (prior or batch), if any
    for start in range(0, n, chunk):
        block = vectors[start : start + chunk]
        probes = lists.probe(block)
        home = probes[:, 0]  # a vector is filed under its nearest centroid
        best, edges = lists.search(block, probes, home, threshold)
        kept = np.zeros(len(block), dtype=bool)
        undecided = best == _NONE
        # Rows with no earlier neighbour inside the chunk are decided already; the others follow the chunk order.
        edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))] if len(edges) else edges
        has_edge = np.zeros(len(block), dtype=bool)
        has_edge[edges[:, 0]] = True
        kept[undecided & ~has_edge] = True
        if len(edges):
            bounds = np.flatnonzero(np.concatenate(([True], edges[1:, 0] != edges[:-1, 0], [True])))
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                q = int(edges[lo, 0])
                if not undecided[q]:
                    continue
                earlier = edges[lo:hi, 1]
                earlier = earlier[kept[earlier]]
                if len(earlier):
                    best[q] = p + start + int(earlier.min())
                else:
                    kept[q] = True
        matched[start : start + len(block)] = np.where(kept, _NONE, best)
        keep = np.flatnonzero(kept)
        lists.add(p + start + keep, block[keep], home[keep])

    prior_match = np.where(matched < p, matched, -1)
    in_batch = (matched != _NONE) & (matched >= p)
    representative[in_batch] = matched[in_batch] - p
    similarity = np.ones(n, dtype=np.float32)
    dropped = np.flatnonzero(matched != _NONE)
    if len(dropped):
        similarity[dropped] = np.einsum("ij,ij->i", vectors[dropped], everything[matched[dropped]])
    kind = "exact (one list)" if nlist == 1 else f"inverted file (nlist={nlist}, nprobe={min(nprobe, nlist)})"
    return SemanticResult(representative, prior_match, similarity, kind)


class _InvertedLists:
    """Kept vectors filed under their nearest centroid, in growable arrays (each growth by half: at most a third of
    the capacity unused, where doubling leaves up to half; the copies it costs are small next to the products)."""

    def __init__(self, centroids: np.ndarray, dim: int, nprobe: int):
        import faiss

        self.nlist = len(centroids)
        self.nprobe = min(nprobe, self.nlist)
        self.quantizer = faiss.IndexFlatIP(dim)
        self.quantizer.add(centroids)
        self.ids = [np.zeros(0, dtype=np.int64) for _ in range(self.nlist)]
        self.vecs = [np.zeros((0, dim), dtype=np.float32) for _ in range(self.nlist)]
        self.size = np.zeros(self.nlist, dtype=np.int64)

    def probe(self, block: np.ndarray) -> np.ndarray:
        if self.nlist == 1:
            return np.zeros((len(block), 1), dtype=np.int64)
        return self.quantizer.search(block, self.nprobe)[1]

    def search(self, block: np.ndarray, probes: np.ndarray, home: np.ndarray, threshold: float):
        """Per query: the smallest kept id with cosine >= threshold among its probed lists (or _NONE); and the
        in-chunk pairs (query, earlier row) whose row is filed under one of the query's probed lists."""
        m = len(block)
        best = np.full(m, _NONE, dtype=np.int64)
        flat = probes.ravel()
        queries = np.repeat(np.arange(m), probes.shape[1])
        order = np.argsort(flat, kind="stable")
        flat, queries = flat[order], queries[order]
        members_order = np.argsort(home, kind="stable")
        members_home = home[members_order]
        bounds = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1], [True])))
        edges = []
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            lst = int(flat[lo])
            probers = queries[lo:hi]
            q_block = block[probers]
            k = self.size[lst]
            if k:
                hits = np.nonzero(q_block @ self.vecs[lst][:k].T >= threshold)
                if len(hits[0]):
                    np.minimum.at(best, probers[hits[0]], self.ids[lst][:k][hits[1]])
            a, b = np.searchsorted(members_home, lst), np.searchsorted(members_home, lst, side="right")
            if b > a:
                members = members_order[a:b]
                rows, cols = np.nonzero(q_block @ block[members].T >= threshold)
                later, earlier = probers[rows], members[cols]
                forward = earlier < later
                if forward.any():
                    edges.append(np.stack((later[forward], earlier[forward]), axis=1))
        edges = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
        return best, edges

    def add(self, ids: np.ndarray, vectors: np.ndarray, home: np.ndarray) -> None:
        order = np.argsort(home, kind="stable")
        home, ids, vectors = home[order], ids[order], vectors[order]
        bounds = np.flatnonzero(np.concatenate(([True], home[1:] != home[:-1], [True]))) if len(home) else []
        for lo, hi in zip(list(bounds[:-1]), list(bounds[1:]), strict=True):
            lst = int(home[lo])
            k, need = self.size[lst], self.size[lst] + (hi - lo)
            if need > len(self.ids[lst]):
                capacity = max(need, len(self.ids[lst]) * 3 // 2, 16)
                grown_ids = np.empty(capacity, dtype=np.int64)
                grown_ids[:k] = self.ids[lst][:k]
                grown_vecs = np.empty((capacity, vectors.shape[1]), dtype=np.float32)
                grown_vecs[:k] = self.vecs[lst][:k]
                self.ids[lst], self.vecs[lst] = grown_ids, grown_vecs
            self.ids[lst][k:need] = ids[lo:hi]
            self.vecs[lst][k:need] = vectors[lo:hi]
            self.size[lst] = need


def _centroids(vectors: np.ndarray, nlist: int, threads: int | None) -> np.ndarray:
    if nlist == 1:
        return np.zeros((1, vectors.shape[1]), dtype=np.float32)
    import faiss

    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), nlist * 64), replace=False)]
    kmeans = faiss.Kmeans(
        vectors.shape[1], nlist, niter=10, spherical=True, seed=1, max_points_per_centroid=64, verbose=False
    )
    kmeans.train(sample)
    return kmeans.centroids.astype(np.float32)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {vectors.shape}")
    return vectors

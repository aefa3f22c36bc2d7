"""Exact Jaccard similarity join (every pair with J >= t), by prefix filtering: the ground truth MinHash is measured
against (the MinHash tests, and bench/dedup.py, which imports it from here).

AllPairs / PPJoin (Bayardo et al. 2007; Xiao et al. 2008): order tokens rare-first. Sets are processed in increasing
size; if J(x, y) >= t with |y| <= |x|, then x's first |x| - ceil(t|x|) + 1 tokens (its probing prefix) share a token
with y's first |y| - ceil(2t/(1+t) |y|) + 1 tokens (its indexing prefix). So only those prefixes are indexed and
probed, sizes must be compatible (|y| >= t|x|), and every candidate is verified exactly: the result is exact.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from persona_hub_dagster.lib.dedup.minhash import TokenizedBatch, exact_jaccard

VERIFY_BLOCK = 2_000_000  # candidate pairs verified at a time


def exact_similar_pairs(batch: TokenizedBatch, threshold: float) -> np.ndarray:
    """All pairs (i, j), i < j, with Jaccard >= threshold: (m, 2) int64. Two empty sets count as identical."""
    n = batch.size
    lengths = batch.lengths
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    frequency = np.bincount(batch.token_ids, minlength=len(batch.token_hashes))
    owner = np.repeat(np.arange(n), lengths)
    # Each text's tokens rare-first (ties by id), as one array sorted by (text, frequency, id).
    order = np.lexsort((batch.token_ids, frequency[batch.token_ids], owner))
    ranked = batch.token_ids[order]
    probe = lengths - np.ceil(threshold * lengths).astype(np.int64) + 1
    index_len = lengths - np.ceil(2 * threshold / (1 + threshold) * lengths).astype(np.int64) + 1
    index: dict[int, list[int]] = defaultdict(list)
    empties: list[int] = []
    candidates: list[tuple[int, int]] = []
    verified: list[np.ndarray] = []

    def verify() -> None:  # in blocks: the candidates of a large input do not all fit in memory at once
        if candidates:
            block = np.array(candidates, dtype=np.int64)
            block = np.stack((block.min(axis=1), block.max(axis=1)), axis=1)
            verified.append(block[exact_jaccard(batch, batch, block) >= threshold])
            candidates.clear()

    offsets = batch.offsets
    for x in np.lexsort((np.arange(n), lengths)).tolist():
        size = int(lengths[x])
        if size == 0:
            candidates.extend((e, x) for e in empties)
            empties.append(x)
            continue
        start = int(offsets[x])
        min_size = threshold * size
        seen: set[int] = set()
        for token in ranked[start : start + int(probe[x])].tolist():
            for y in index.get(token, ()):
                if y not in seen and lengths[y] >= min_size:
                    seen.add(y)
                    candidates.append((y, x))
        for token in ranked[start : start + int(index_len[x])].tolist():
            index[token].append(x)
        if len(candidates) >= VERIFY_BLOCK:
            verify()
    verify()
    if not verified:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(verified)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]

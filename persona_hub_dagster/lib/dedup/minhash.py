"""Near-duplicate detection by MinHash over n-grams of units (Persona Hub: 1-grams, 128 permutations, Jaccard 0.9),
vectorized over whole batches and verified exactly.

Pipeline (each step measured in bench/dedup.py):
1. Tokens: lower-cased units that fit the script (scripts.py: words of space-separated scripts, Han characters, letter
   pairs of kana and Thai; n-grams of units for ngram > 1), as a set per text, tokenized by polars in chunks. A
   regex word would be a whole Chinese sentence: one changed character would make it a different token. Each
   distinct token is hashed once for the batch (SHA-1, 32 bits, then the MurmurHash3 finalizer); texts become sorted
   arrays of token ids (CSR), never Python sets of strings.
2. Signatures: datasketch 2.x's default `affine32` scheme (h -> a*h + b mod 2^32, parameters from
   numpy.random.RandomState(seed)), so datasketch's MinHash gives bit-identical signatures and is the test oracle.
   Computed permutation by permutation over all token occurrences of a chunk of texts with one `minimum.reduceat`
   (10x faster than the (tokens x permutations) matrix).
3. Texts with identical token sets are exact duplicates: found by a 128-bit order-independent fingerprint of the
   set, with no pairwise work, and left out of LSH (they would make buckets quadratic for nothing).
4. LSH: signatures cut into bands of `rows` rows, chosen for the threshold (`choose_bands`) so that a pair exactly at
   the threshold becomes a candidate with probability >= 0.95 (10 bands x 12 rows for 0.9; datasketch's automatic
   choice, 5 x 25, catches such a pair 31% of the time). Pairs above the threshold are caught more often still:
   measured pair recall 0.9997 at 200k personas (bench/RESULTS.md).
5. Verification: a candidate pair is kept if its estimated Jaccard (signature agreement) is within a margin of the
   threshold and then if its exact Jaccard (token id sets, vectorized) reaches it. Estimates alone would let 0.88
   pairs in and keep 0.91 pairs out; the exact check makes every kept pair a true one. Against earlier shards the
   estimate comes from a sketch (the low byte of each signature value, `sketches`: 128 B a persona in the hub
   index), so only the earlier personas that pass it are fetched and tokenized.
6. Representatives: keep-first in input order over the verified pairs (default), or union-find clusters
   (`clustering="connected_components"`); see `cluster_tokenized`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from persona_hub_dagster.lib.dedup.scripts import unit_frame

MAX_HASH = np.uint32(0xFFFFFFFF)
# A bucket with more members than this (degenerate: e.g. thousands of near-identical two-word personas) is verified
# as each member against its first BUCKET_PAIR_CAP members, which bounds the work; clusters still join transitively.
BUCKET_PAIR_CAP = 64
ESTIMATE_MARGIN = 0.1  # ~3.5 standard deviations of the 128-permutation estimate at J = 0.9
TOKENIZE_CHUNK = 100_000  # texts per polars tokenization pass
SIGNATURE_CHUNK = 4_000  # texts per signature pass: their token hashes (~0.5 MB) stay in L2 across 128 permutations


def tokenize(text: str, ngram: int = 1) -> frozenset[str]:
    """The token set of one text, exactly as the batch path computes it (for tests and small inputs)."""
    return frozenset(_doc_tokens([text], ngram)["tok"].to_list())


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of datasketch's affine32 scheme for (num_perm, seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _mix64(h: np.ndarray, salt: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h.astype(np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(32)
        h *= np.uint64(0xD6E8FEB86659FD93)
        return h ^ (h >> np.uint64(32))


@dataclass
class TokenizedBatch:
    """Token sets as CSR arrays: text i holds token_ids[offsets[i]:offsets[i+1]] (sorted, distinct)."""

    offsets: np.ndarray  # int64, n + 1
    token_ids: np.ndarray  # int32
    token_hashes: np.ndarray  # uint32 per token id: fmix32(sha1_32(token))

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, ids: np.ndarray) -> TokenizedBatch:
        lengths = self.lengths[ids]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenizedBatch(offsets, self.token_ids[_ranges(self.offsets[ids], lengths)], self.token_hashes)


def tokenize_batch(texts: Sequence[str], ngram: int = 1) -> TokenizedBatch:
    # A private categorical namespace numbers the distinct tokens of this batch 0, 1, 2, ... across all chunks:
    # 2x faster than joining each chunk's tokens to a vocabulary table.
    categories = pl.Categories.random()
    token_type = pl.Categorical(categories)
    # polars frees a namespace's categories (and restarts its codes) once no column uses them: this one-row column
    # keeps them alive across chunks. Its "" token never occurs in text (units are never empty).
    keeper = pl.Series([""], dtype=pl.String).cast(token_type)
    id_parts, length_parts = [], []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = list(texts[start : start + TOKENIZE_CHUNK])
        pairs = _doc_tokens(chunk, ngram)  # (doc, tok), a token may repeat within a text
        ids = pairs.get_column("tok").cast(token_type).to_physical().to_numpy().astype(np.int64)
        keys = np.sort(pairs.get_column("doc").to_numpy().astype(np.int64) << 32 | ids)  # by (text, token id)
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys  # sets: distinct
        id_parts.append((keys & 0xFFFFFFFF).astype(np.int32))
        length_parts.append(np.bincount(keys >> 32, minlength=len(chunk)))
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    token_ids = np.concatenate(id_parts).astype(np.int32) if id_parts else np.zeros(0, dtype=np.int32)
    vocabulary = categories.to_series().to_list()
    del keeper
    raw = np.fromiter(
        (struct.unpack("<I", hashlib.sha1(t.encode("utf-8")).digest()[:4])[0] for t in vocabulary),
        dtype=np.uint32,
        count=len(vocabulary),
    )
    return TokenizedBatch(offsets, token_ids, _fmix32(raw))


def _doc_tokens(texts: list[str], ngram: int) -> pl.DataFrame:
    units = unit_frame(texts)
    if ngram > 1:
        per_doc = units.group_by("doc", maintain_order=True).agg("tok")
        grams = [
            (doc, " ".join(ws[i : i + ngram]))
            for doc, ws in zip(per_doc["doc"].to_list(), per_doc["tok"].to_list(), strict=True)
            for i in range(len(ws) - ngram + 1)
        ]
        return pl.DataFrame(grams, schema={"doc": pl.UInt32, "tok": pl.String}, orient="row")
    return units


def signatures(batch: TokenizedBatch, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32; a text without tokens keeps all-max (datasketch's empty MinHash)."""
    a, b = permutations(num_perm, seed)
    out = np.full((batch.size, num_perm), MAX_HASH, dtype=np.uint32)
    nonempty = np.flatnonzero(batch.lengths)
    for start in range(0, len(nonempty), SIGNATURE_CHUNK):
        docs = nonempty[start : start + SIGNATURE_CHUNK]
        lengths = batch.lengths[docs]
        hashes = batch.token_hashes[batch.token_ids[_ranges(batch.offsets[docs], lengths)]]
        segment_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        block = np.empty((num_perm, len(docs)), dtype=np.uint32)
        permuted = np.empty_like(hashes)
        with np.errstate(over="ignore"):
            for k in range(num_perm):  # uint32 arithmetic wraps: mod 2^32, as in datasketch
                np.multiply(hashes, a[k], out=permuted)
                permuted += b[k]
                block[k] = np.minimum.reduceat(permuted, segment_starts)
        out[docs] = block.T
    return out


def set_fingerprints(batch: TokenizedBatch) -> np.ndarray:
    """(n, 2) uint64: an order-independent 128-bit fingerprint of each token set (equal sets, equal prints)."""
    out = np.zeros((batch.size, 2), dtype=np.uint64)
    nonempty = np.flatnonzero(batch.lengths)
    if len(nonempty):
        starts = batch.offsets[nonempty]
        token_hashes = batch.token_hashes[batch.token_ids]
        with np.errstate(over="ignore"):
            for column, salt in enumerate((0x51ED270B27, 0x2545F4914F6CDD1D)):
                out[nonempty, column] = np.add.reduceat(_mix64(token_hashes, salt), starts)
    return out


def exact_duplicate_pairs(batch: TokenizedBatch) -> np.ndarray:
    """(first, other) for every text whose token set equals an earlier text's: (m, 2) int64."""
    prints = set_fingerprints(batch)
    frame = pl.DataFrame({"h0": prints[:, 0], "h1": prints[:, 1], "i": np.arange(batch.size)})
    firsts = frame.with_columns(first=pl.col("i").min().over("h0", "h1")).filter(pl.col("i") != pl.col("first"))
    return np.stack((firsts["first"].to_numpy(), firsts["i"].to_numpy()), axis=1).astype(np.int64).reshape(-1, 2)


def choose_bands(threshold: float, num_perm: int, min_recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm such that a pair at exactly `threshold` becomes a candidate with
    probability >= min_recall, choosing, among those, the fewest expected false candidates (probability mass below
    the threshold). Falls back to the best achievable recall."""
    best, best_key = None, None
    grid = np.linspace(0.0, threshold, 200)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        recall = 1 - (1 - threshold**rows) ** bands
        false_mass = float(np.mean(1 - (1 - grid**rows) ** bands))
        key = (recall < min_recall, -recall if recall < min_recall else false_mass)
        if best_key is None or key < best_key:
            best, best_key = (bands, rows), key
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64, one hash per band of rows. Equal bands give equal keys; a rare false collision only adds a
    candidate, which verification removes."""
    keys = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    multipliers = (np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
            keys[:, band] = _mix64((block * multipliers).sum(axis=1, dtype=np.uint64), band)
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Distinct pairs (i, j), i < j, that share a key in some band: (m, 2) int64.

    Vectorized per bucket size: all buckets of size m are expanded at once with the (p < q) index template of m.
    """
    n = keys.shape[0]
    found = []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
        sizes = np.diff(np.concatenate((starts, [n])))
        for size in np.unique(sizes[sizes > 1]):
            bucket_starts = starts[sizes == size]
            p, q = np.triu_indices(int(size), k=1)
            keep = p < BUCKET_PAIR_CAP
            p, q = p[keep], q[keep]
            left = order[bucket_starts[:, None] + p[None, :]].ravel()
            right = order[bucket_starts[:, None] + q[None, :]].ravel()
            found.append(np.stack((np.minimum(left, right), np.maximum(left, right)), axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    codes = np.sort(pairs[:, 0] * n + pairs[:, 1])  # sort + neighbour test: 7x faster than np.unique's hashing
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))]
    return np.stack((codes // n, codes % n), axis=1)


def estimated_jaccard(sigs: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        out[start : start + chunk] = (sigs[block[:, 0]] == sigs[block[:, 1]]).mean(axis=1)
    return out


SKETCH_CHANCE = 1 / 256  # two different signature values share their low byte with this chance


def sketches(sigs: np.ndarray) -> np.ndarray:
    """b-bit MinHash (Li and Konig, b = 8): the low byte of each signature value, 1/4 of the signature's size."""
    return (sigs & 0xFF).astype(np.uint8)


def sketch_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of row pairs of two (n, num_perm) sketch arrays: agreement, less the chance agreement of
    unequal values. Its spread is that of the full signatures' estimate within 1% (at J = 0.9)."""
    agreement = (left == right).mean(axis=1, dtype=np.float32)
    return (agreement - SKETCH_CHANCE) / (1 - SKETCH_CHANCE)


def exact_jaccard(left: TokenizedBatch, right: TokenizedBatch, pairs: np.ndarray, chunk: int = 1 << 17) -> np.ndarray:
    """Exact Jaccard of left[i] and right[j] for each pair (i, j) (the same batch twice for within-batch pairs;
    both batches must share one vocabulary). Two empty sets count as identical. Vectorized: the token ids of both
    sides, keyed by pair, are sorted together and the equal neighbours counted."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        block = pairs[start : start + chunk]
        len_l, len_r = left.lengths[block[:, 0]], right.lengths[block[:, 1]]
        pair_l = np.repeat(np.arange(len(block), dtype=np.int64), len_l)
        pair_r = np.repeat(np.arange(len(block), dtype=np.int64), len_r)
        ids_l = left.token_ids[_ranges(left.offsets[block[:, 0]], len_l)].astype(np.int64)
        ids_r = right.token_ids[_ranges(right.offsets[block[:, 1]], len_r)].astype(np.int64)
        keys = np.concatenate((pair_l << 32 | ids_l, pair_r << 32 | ids_r))
        keys.sort()
        shared = keys[1:][keys[1:] == keys[:-1]] >> 32
        intersection = np.bincount(shared, minlength=len(block))
        union = len_l + len_r - intersection
        out[start : start + chunk] = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return out


@dataclass
class MinHashResult:
    representative: np.ndarray  # per text: the kept text it duplicates (itself when kept)
    pairs: np.ndarray  # verified duplicate pairs (i, j), i < j, exact duplicates as (first, other)
    jaccard: np.ndarray  # exact Jaccard of each pair
    candidates: int  # LSH candidate pairs before verification
    bands: int
    rows: int


CLUSTERINGS = ("keep_first", "connected_components")


def minhash_clusters(
    texts: Sequence[str],
    *,
    threshold: float = 0.9,
    num_perm: int = 128,
    ngram: int = 1,
    seed: int = 1,
    min_recall: float = 0.95,
    clustering: str = "keep_first",
) -> MinHashResult:
    batch = tokenize_batch(texts, ngram)
    return cluster_tokenized(
        batch, threshold=threshold, num_perm=num_perm, seed=seed, min_recall=min_recall, clustering=clustering
    )


def cluster_tokenized(
    batch: TokenizedBatch,
    *,
    threshold: float = 0.9,
    num_perm: int = 128,
    seed: int = 1,
    min_recall: float = 0.95,
    clustering: str = "keep_first",
) -> MinHashResult:
    """Verified near-duplicate pairs of a tokenized batch, and each text's representative.

    clustering="keep_first" (default): texts are taken in order; a text is dropped when it is a verified duplicate of
    an earlier kept text, which becomes its representative. Every drop is backed by a pair with J >= threshold and
    no two kept texts form a found pair. "connected_components": union-find over all found pairs, each cluster
    keeping its earliest text; it also drops texts linked only through a chain (A~B~C with J(A, C) < threshold),
    so a representative can be less similar than the threshold (measured: 0.6% of drops; bench/RESULTS.md).
    """
    if clustering not in CLUSTERINGS:
        raise ValueError(f"clustering must be one of {CLUSTERINGS}, not {clustering!r}")
    n = batch.size
    exact = exact_duplicate_pairs(batch)
    distinct = np.ones(n, dtype=bool)
    distinct[exact[:, 1]] = False
    distinct_ids = np.flatnonzero(distinct)
    sub = batch.subset(distinct_ids)
    sigs = signatures(sub, num_perm, seed)
    bands, rows = choose_bands(threshold, num_perm, min_recall)
    local = candidate_pairs(band_keys(sigs, bands, rows))
    plausible = local[estimated_jaccard(sigs, local) >= threshold - ESTIMATE_MARGIN]
    jaccard = exact_jaccard(sub, sub, plausible)
    kept = jaccard >= threshold
    near = distinct_ids[plausible[kept]].reshape(-1, 2)
    pairs = np.concatenate((exact, near))
    scores = np.concatenate((np.ones(len(exact), dtype=np.float32), jaccard[kept]))
    if clustering == "connected_components":
        representative = earliest_of_components(n, pairs)
    else:
        representative = keep_first(n, near)
        # An exact copy shares its original's fate: kept original -> the original; dropped -> the same representative.
        representative[exact[:, 1]] = representative[exact[:, 0]]
    return MinHashResult(representative, pairs, scores, len(local), bands, rows)


def keep_first(n: int, pairs: np.ndarray) -> np.ndarray:
    """Greedy in input order over verified pairs (i < j): j is dropped for the earliest kept i it is paired with."""
    representative = np.arange(n)
    if len(pairs) == 0:
        return representative
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]  # by later member, then earlier member
    later = pairs[:, 1]
    bounds = np.flatnonzero(np.concatenate(([True], later[1:] != later[:-1], [True])))
    kept = np.ones(n, dtype=bool)
    earlier = pairs[:, 0]
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        j = int(later[start])
        for i in earlier[start:end].tolist():  # ascending: the first kept one is the earliest
            if kept[i]:
                kept[j] = False
                representative[j] = i
                break
    return representative


def earliest_of_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over the pairs (as connected components): each node's smallest index in its component."""
    if len(pairs) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    earliest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(earliest, labels, np.arange(n))
    return earliest[labels]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated index ranges [start, start + length) for each (start, length), vectorized."""
    keep = lengths > 0
    starts, lengths = starts[keep].astype(np.int64), lengths[keep].astype(np.int64)
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    steps = np.ones(int(lengths.sum()), dtype=np.int64)
    steps[0] = starts[0]
    # At each range's first position, jump from the previous range's last index to this range's start.
    steps[np.cumsum(lengths)[:-1]] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
    return np.cumsum(steps)

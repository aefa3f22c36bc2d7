"""The hub index's vectors: an inverted file of our own on FAISS's k-means, one segment per shard (see index.py for
the whole index). `VectorLists` is the part of `HubIndex` that files, trains and scans them; it reads the index's
folder, manifest and accounting, so it is a base class of `HubIndex`, not an object of its own.

Centroids are trained once the index holds TRAIN_AT vectors and again only when it has grown RETRAIN_GROWTH-fold (the
one time segments are rewritten: amortized, each vector is re-filed about once); until then one list, i.e. exact
search. A shard's segment is its kept vectors sorted by list, as raw float32 (`.f32`), with the list offsets and hub
positions beside it (`.npz`). A query batch reads the probed shards' segments in bounded list ranges (RANGE_BYTES)
and compares its queries with every vector of their probed lists in float32 (BLAS), so every reported similarity is
exact; only the choice of lists (NPROBE of nlist) is approximate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from persona_hub_dagster.lib.dedup.index import Manifest, ShardEntry

TRAIN_AT = 50_000  # vectors: below this the index is one list, and a lookup is an exact search
RETRAIN_GROWTH = 8  # retrain (and re-file) once the index holds this many times what the centroids were trained on
NPROBE = 32
SEARCH_NPROBE = 128  # lists a persona search probes: a handful of queries, so recall costs next to nothing
RANGE_BYTES = 64 * 2**20  # vectors read per step of a lookup
PRODUCT_BUDGET = 8 * 2**20  # similarities per matrix product (32 MB of float32)


class VectorLists:
    folder: Path
    manifest: Manifest
    bytes_read: int

    def _save(self) -> None: ...

    def _shard_entry(self, sid: int) -> ShardEntry:
        return next(e for e in self.manifest.shards.values() if e.sid == sid)

    def _probe(self, queries: np.ndarray, nprobe: int = NPROBE) -> np.ndarray:
        if self.manifest.nlist == 1:
            return np.zeros((len(queries), 1), dtype=np.int64)
        return self._quantizer().search(queries, min(nprobe, self.manifest.nlist))[1]

    def _quantizer(self, generation: int | None = None):
        import faiss

        generation = self.manifest.generation if generation is None else generation
        centroids = np.load(self.folder / "segments" / f"centroids-{generation}.npy")
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        return quantizer

    def _scan(self, queries, probes, segments, collect) -> None:
        """Compares each query with every vector of its probed lists in the segments, reading them list range by
        list range, and hands each block of similarities to `collect(query rows, stored keys, similarities)`, which
        keeps what it needs (memory: one range and what `collect` keeps)."""
        nlist, dim = self.manifest.nlist, queries.shape[1]
        flat = probes.ravel()
        order = np.argsort(flat, kind="stable")
        probing = np.repeat(np.arange(len(queries)), probes.shape[1])[order]
        list_starts = np.searchsorted(flat[order], np.arange(nlist + 1))
        sizes = sum(np.diff(offsets) for _, _, (offsets, _) in segments)
        files = {sid: open(self._segment_path(sid, ".f32"), "rb") for sid, _, _ in segments}
        try:
            for lo, hi in _ranges_by_size(sizes * dim * 4, RANGE_BYTES):
                if list_starts[hi] == list_starts[lo]:
                    continue  # no query probes these lists
                blocks, lists, keys = [], [], []
                for sid, rank, (offsets, positions) in segments:
                    a, b = int(offsets[lo]), int(offsets[hi])
                    if a == b:
                        continue
                    raw = os.pread(files[sid].fileno(), (b - a) * dim * 4, a * dim * 4)
                    self.bytes_read += len(raw)
                    blocks.append(np.frombuffer(raw, dtype=np.float32).reshape(-1, dim))
                    lists.append(np.repeat(np.arange(lo, hi), np.diff(offsets[lo : hi + 1])))
                    keys.append((np.int64(rank) << 32) | positions[a:b].astype(np.int64))
                if not blocks:
                    continue
                lists_all = np.concatenate(lists)
                grouped = np.argsort(lists_all, kind="stable")
                vectors = np.concatenate(blocks)[grouped]
                keys_all = np.concatenate(keys)[grouped]
                bounds = np.searchsorted(lists_all[grouped], np.arange(lo, hi + 1))
                for lst in range(lo, hi):
                    members = slice(bounds[lst - lo], bounds[lst - lo + 1])
                    askers = probing[list_starts[lst] : list_starts[lst + 1]]
                    if members.start == members.stop or not len(askers):
                        continue
                    stored = vectors[members]
                    step = max(1, PRODUCT_BUDGET // len(stored))
                    for start in range(0, len(askers), step):
                        q = askers[start : start + step]
                        collect(q, keys_all[members], queries[q] @ stored.T)
        finally:
            for f in files.values():
                f.close()

    def _segment_path(self, sid: int, suffix: str, generation: int | None = None) -> Path:
        generation = self.manifest.generation if generation is None else generation
        return self.folder / "segments" / f"{sid:08d}-g{generation}{suffix}"

    def _segment(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """(list offsets, hub positions in stored order) of a shard's segment."""
        with np.load(self._segment_path(sid, ".npz")) as meta:
            return meta["offsets"], meta["positions"]

    def _write_segment(self, sid: int, vectors: np.ndarray, positions: np.ndarray, generation: int) -> None:
        lists, nlist = self._assign(vectors, generation)
        order = np.lexsort((positions, lists))
        offsets = np.searchsorted(lists[order], np.arange(nlist + 1))
        _atomic_rows(self._segment_path(sid, ".f32", generation), vectors, order)
        tmp = self._segment_path(sid, ".tmp.npz", generation)
        np.savez(tmp, offsets=offsets.astype(np.int64), positions=positions[order].astype(np.uint32))
        os.replace(tmp, self._segment_path(sid, ".npz", generation))

    def _assign(self, vectors: np.ndarray, generation: int) -> tuple[np.ndarray, int]:
        """(each vector's list, the number of lists) under the centroids of `generation` (none: one list)."""
        if generation == 0:
            return np.zeros(len(vectors), dtype=np.int64), 1
        quantizer = self._quantizer(generation)
        return quantizer.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0], quantizer.ntotal

    def _read_segment(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, positions) of a whole segment (for retraining only)."""
        _, positions = self._segment(sid)
        raw = self._segment_path(sid, ".f32").read_bytes()
        return np.frombuffer(raw, dtype=np.float32).reshape(-1, self.manifest.dim), positions

    def _maybe_train(self) -> None:
        """Train centroids once the index is big enough, retrain after RETRAIN_GROWTH-fold growth: every segment is
        re-filed under the new lists (the one time the index is rewritten), then the manifest switches."""
        total = self.manifest.vectors
        due = TRAIN_AT if self.manifest.nlist == 1 else RETRAIN_GROWTH * self.manifest.trained_on
        if total < due:
            return
        from persona_hub_dagster.lib.dedup.semantic import _centroids

        # ~2 sqrt(N) at the middle of the growth this training serves; k-means wants >= 39 points per centroid.
        nlist = max(1, int(min(4 * np.sqrt(total), total / 39)))
        with_vectors = [e.sid for e in self.manifest.shards.values() if e.vectors]
        sample_size = min(total, nlist * 64)
        rng = np.random.default_rng(0)
        sample = []
        for sid in with_vectors:
            vectors, _ = self._read_segment(sid)
            take = rng.random(len(vectors)) < sample_size / total
            sample.append(vectors[take])
        generation = self.manifest.generation + 1
        centroids = _centroids(np.concatenate(sample), nlist, None)
        atomic_save_npy(self.folder / "segments" / f"centroids-{generation}.npy", centroids)
        for sid in with_vectors:
            vectors, positions = self._read_segment(sid)
            self._write_segment(sid, vectors, positions, generation)
        old = self.manifest.generation
        self.manifest.generation, self.manifest.nlist, self.manifest.trained_on = generation, len(centroids), total
        self._save()
        for path in (self.folder / "segments").glob(f"*-g{old}.*"):
            path.unlink()
        (self.folder / "segments" / f"centroids-{old}.npy").unlink(missing_ok=True)


def earliest_above(threshold: float, best: np.ndarray, similarity: np.ndarray):
    """A `_scan` collector: per query the smallest key (and its cosine) with cosine >= threshold, into `best` and
    `similarity`. Only the best so far is kept: memory stays O(queries) however many near-duplicates a query has."""

    def collect(q, keys, sims) -> None:
        rows, cols = np.nonzero(sims >= threshold)
        if len(rows):
            _keep_smallest(q[rows], keys[cols], sims[rows, cols], best, similarity)

    return collect


def nearest_k(top_keys: np.ndarray, top_sims: np.ndarray):
    """A `_scan` collector: per query its k most similar keys so far (`top_keys`/`top_sims`, (queries, k), sims
    -inf where empty), best first once the scan is over."""
    k = top_keys.shape[1]

    def collect(q, keys, sims) -> None:
        merged_sims = np.concatenate([top_sims[q], sims], axis=1)
        merged_keys = np.concatenate([top_keys[q], np.broadcast_to(keys, sims.shape)], axis=1)
        keep = np.argpartition(-merged_sims, k - 1, axis=1)[:, :k] if merged_sims.shape[1] > k else None
        if keep is None:
            keep = np.broadcast_to(np.arange(merged_sims.shape[1]), merged_sims.shape)
        chosen_sims = np.take_along_axis(merged_sims, keep, axis=1)
        order = np.argsort(-chosen_sims, axis=1, kind="stable")
        top_sims[q] = np.take_along_axis(chosen_sims, order, axis=1)[:, :k]
        top_keys[q] = np.take_along_axis(np.take_along_axis(merged_keys, keep, axis=1), order, axis=1)[:, :k]

    return collect


def _keep_smallest(q, key, sim, best, similarity) -> None:
    """best[q] = min(best[q], key) with the cosine of the kept key, for hits (q, key, sim)."""
    order = np.lexsort((key, q))
    q, key, sim = q[order], key[order], sim[order]
    first = np.concatenate(([True], q[1:] != q[:-1]))
    q, key, sim = q[first], key[first], sim[first]
    better = key < best[q]
    best[q[better]], similarity[q[better]] = key[better], sim[better]


def _ranges_by_size(sizes: np.ndarray, budget: int):
    """Consecutive [lo, hi) ranges of lists whose total size stays within `budget` (a bigger list goes alone)."""
    lo, total = 0, 0
    for i, size in enumerate(sizes.tolist()):
        if i > lo and total + size > budget:
            yield lo, i
            lo, total = i, 0
        total += size
    if lo < len(sizes):
        yield lo, len(sizes)


def _atomic_rows(path: Path, vectors: np.ndarray, order: np.ndarray, rows: int = 65_536) -> None:
    """vectors[order] as raw float32, written part by part (one copy of the vectors is what a shard holds)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        for lo in range(0, len(order), rows):
            out.write(np.ascontiguousarray(vectors[order[lo : lo + rows]], dtype=np.float32).tobytes())
    os.replace(tmp, path)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        np.save(out, array)
    os.replace(tmp, path)

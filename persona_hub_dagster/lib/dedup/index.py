"""The hub's persistent cross-shard index: what a new shard is compared with, read by probe and appended per shard,
so that a hub step's memory and time depend on its shard, not on how many personas the hub holds.

Two parts, in one folder that lives with the tables (`<root>/_index/persona_hub/lookup`):

- Band keys and the kept personas, in RocksDB (rocksdict). `b` + band (2 bytes) + band key (8 bytes) -> every kept
  persona holding that key, as packed (shard id, position) pairs; `p` + shard id + position -> the persona's id and
  text (what exact-Jaccard verification and the decision record need). A shard's probes are one sorted multi_get;
  RocksDB's bloom filters answer the probes that hit nothing (almost all of them) from memory, and its block cache
  is fixed, so a lookup's memory does not grow with the hub. A key's pairs are rewritten when a shard adds to it or
  leaves it (read-modify-write of the keys that shard holds, no merge operator needed).
- Per shard, beside RocksDB: its band keys by position (`<sid>-keys.npy`, what removing the shard rewrites) and its
  MinHash sketches (`<sid>-sketches.npy`, 128 B a persona, row for row). A band hit is estimated from the sketches
  before its text is fetched: a key held by thousands of earlier personas (templates, boilerplate) costs a
  candidate a gather of bytes, not thousands of texts. Both are read memory-mapped, a few pages per hit.
- Vectors, in an inverted file of our own built on FAISS's k-means (vector_lists.py): one segment per shard, its
  kept vectors sorted by list; a query batch reads the probed lists in bounded ranges and every reported
  similarity is exact. FAISS's own OnDiskInvertedLists was the alternative: it cannot drop one shard's vectors
  without rewriting the lists, and its per-query scan is slower than list-at-a-time matrix products (semantic.py).

Keep-first over shards: every entry carries its shard's id; a lookup names the shards it may match (the shards
registered before the one being deduplicated) with their rank, and the earliest match wins by (rank, position),
as the hub's decisions require.

Consistency: `manifest.json` is the commit point. A shard is added by writing its entries, then the manifest; it is
removed from the manifest first, then its entries are deleted. Lookups only honour shards in the manifest, so a
crash in between leaves entries nobody reads (dropped the next time their keys are rewritten). `catch_up` compares
the manifest with the hub's tables (which run of each shard is in the hub) and adds, replaces or removes shards
until they agree: the upgrade path for hubs built before the index, and how re-runs and unregistered shards leave.

Object storage: with an `s3://` root the index is worked on in a local cache folder and mirrored under the root
(index_mirror.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from persona_hub_dagster.lib.dedup.index_mirror import ObjectStoreMirror
from persona_hub_dagster.lib.dedup.vector_lists import (
    SEARCH_NPROBE,
    VectorLists,
    atomic_save_npy,
    earliest_above,
    nearest_k,
)
from persona_hub_dagster.lib.locations import is_uri

INDEX_CACHE_ENV = "PERSONA_HUB_INDEX_CACHE"
BLOCK_CACHE_BYTES = 64 * 2**20
TABLE_FORMAT = 2  # 1: every file with bloom filters; 2: partitioned
PROBES_PER_GET = 50_000  # band keys per RocksDB multi_get: ~5% of a 10^5-persona shard's
HITS_PER_PART = 500_000  # (row, persona) hits handed on at once: ~100 MB with their sketches
_NONE = np.iinfo(np.int64).max
_ENTRY = np.dtype([("sid", "<u4"), ("pos", "<u4")])
_BAND_KEY = np.dtype([("tag", "S1"), ("band", ">u2"), ("key", ">u8")])
_PERSONA_KEY = np.dtype([("tag", "S1"), ("sid", ">u4"), ("pos", ">u4")])


@dataclass
class ShardEntry:
    sid: int
    run_id: str
    kept: int
    vectors: int


@dataclass
class Manifest:
    layout: dict | None = None  # how band keys were computed (num_perm, seed, ngram, bands, rows)
    model: str | None = None  # the embedding model of the vectors
    dim: int = 0
    nlist: int = 1
    trained_on: int = 0
    generation: int = 0  # of the centroids: segments are named by it
    table_format: int = 0  # of RocksDB's files (upgrade_tables)
    next_sid: int = 1
    shards: dict[str, ShardEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        raw["shards"] = {k: ShardEntry(**v) for k, v in raw["shards"].items()}
        return cls(**raw)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), sort_keys=True))
        os.replace(tmp, path)

    @property
    def vectors(self) -> int:
        return sum(e.vectors for e in self.shards.values())


@dataclass
class ShardEntries:
    """What a shard adds to the index: its kept personas (hub positions, ids, texts, band keys) and the vectors of
    those that were embedded (their positions, model)."""

    shard: str
    run_id: str
    positions: np.ndarray  # int, the kept personas' hub positions
    persona_ids: Sequence[str]
    texts: Sequence[str]
    keys: np.ndarray  # (kept, bands) uint64
    sketches: np.ndarray  # (kept, num_perm) uint8, minhash.sketches of their signatures
    vector_positions: np.ndarray
    vectors: np.ndarray  # (embedded, dim) float32, L2-normalized
    model: str | None


@dataclass
class Matches:
    """Per query: the earliest matching prior persona (its shard, id, position) and the similarity, or None."""

    shard: list[str | None]
    persona_id: list[str | None]
    position: np.ndarray
    similarity: np.ndarray


@dataclass(frozen=True)
class Neighbour:
    """A kept persona found by `HubIndex.nearest`."""

    shard: str
    persona_id: str
    persona: str
    similarity: float
    position: int


class HubIndex(VectorLists, ObjectStoreMirror):
    """The index in a local folder, optionally mirrored to an object-store location. Use as a context manager."""

    def __init__(self, folder: str | Path, mirror: str | None = None):
        self.folder = Path(folder)
        self.mirror = mirror
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "segments").mkdir(exist_ok=True)
        self._remote: dict[str, int] = {}
        if mirror:
            self._fetch()
        self.manifest = Manifest.load(self.folder / "manifest.json")
        self._db = None
        self.bytes_read = 0  # vector bytes read by lookups (RocksDB's reads are its own; see `stats`)
        # Seconds spent in each part of the lookups and updates, summed over this object's life: where a hub step's
        # time goes as the hub grows (the materialization and bench/hub_scale.py report it).
        self.seconds: dict[str, float] = {}

    @classmethod
    def for_location(cls, location: str, cache_dir: str | None = None) -> HubIndex:
        """The index at `location`: used in place when local; an object-store location is worked on in a cache
        folder (`cache_dir`, else $PERSONA_HUB_INDEX_CACHE, else the temp folder), one per location."""
        if not is_uri(location):
            return cls(location)
        base = cache_dir or os.environ.get(INDEX_CACHE_ENV) or os.path.join(tempfile.gettempdir(), "persona-hub-index")
        name = hashlib.blake2b(location.encode(), digest_size=8).hexdigest()
        return cls(Path(base) / name, mirror=location)

    def __enter__(self) -> HubIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.flush()
            self._db.close()
            self._db = None

    @property
    def db(self):
        if self._db is None:
            from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Options, Rdict

            options = Options(raw_mode=True)
            options.create_if_missing(True)
            table = BlockBasedOptions()
            table.set_bloom_filter(10, False)
            table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
            # Index and filter blocks (~14 B per persona: 14 GB at 10^9) live in the fixed cache, not beside it, so
            # the process's memory does not grow with the hub; L0's stay pinned (they are probed first).
            table.set_cache_index_and_filter_blocks(True)
            table.set_pin_l0_filter_and_index_blocks_in_cache(True)
            # Partitioned filters and index: a probe loads the 4 KB partitions it needs. A whole file's filter is
            # one block of megabytes, and once the filters outgrow the cache (~10^7 personas) every probe read one
            # again: 145 GB for a 10^5-persona shard.
            table.set_partition_filters(True)
            table.set_index_type(BlockBasedIndexType.two_level_index_search())
            table.set_metadata_block_size(4096)
            table.set_pin_top_level_index_and_filter(True)
            options.set_block_based_table_factory(table)
            options.set_compression_type(DBCompressionType.lz4())
            # The options again for the default column family: otherwise rocksdict reopens an existing database with
            # the options saved in its folder, which cannot hold a filter policy or a cache (no bloom filters, an
            # 8 MB cache: ~28 KB read per probe at 10^7 personas).
            self._db = Rdict(str(self.folder / "rocksdb"), options, column_families={"default": options})
        return self._db

    def upgrade_tables(self) -> bool:
        """Rewrite RocksDB's files once if some were written before TABLE_FORMAT (without bloom filters, by reopened
        databases; or with whole-file filters): one compaction, 100 s at 10^7 personas. Returns whether it ran."""
        if self.manifest.table_format >= TABLE_FORMAT or not (self.folder / "rocksdb").exists():
            self.manifest.table_format = TABLE_FORMAT
            return False
        from rocksdict import BottommostLevelCompaction, CompactOptions

        every_file = CompactOptions()
        every_file.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        self.db.compact_range(None, None, every_file)
        self.manifest.table_format = TABLE_FORMAT
        self._save()
        return True

    # ------------------------------------------------------------------ which shards

    def ranks(self, prefix: Sequence[str]) -> dict[int, int]:
        """{shard id: rank} for the shards of `prefix` (in keep-first order) that the index holds."""
        return {self.manifest.shards[s].sid: r for r, s in enumerate(prefix) if s in self.manifest.shards}

    def missing(self, prefix: Sequence[str]) -> list[str]:
        return [s for s in prefix if s not in self.manifest.shards]

    @contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = round(self.seconds.get(part, 0.0) + time.perf_counter() - started, 3)

    def _shard_of(self) -> dict[int, str]:
        return {e.sid: s for s, e in self.manifest.shards.items()}

    # ------------------------------------------------------------------ band keys

    def band_hits(self, keys: np.ndarray, ranks: Mapping[int, int]) -> np.ndarray:
        """(m, 3) int64 rows (query row, shard id, position): every kept persona of the ranked shards that shares a
        band key with query row i of `keys` (n, bands)."""
        found = list(self.band_hit_chunks(keys, ranks))
        return unique_rows(np.concatenate(found)) if found else np.zeros((0, 3), dtype=np.int64)

    def band_hit_chunks(
        self, keys: np.ndarray, ranks: Mapping[int, int], probes: int | None = None
    ) -> Iterator[np.ndarray]:
        """`band_hits` in parts, `probes` band keys at a time in key order: one sweep through RocksDB's files (each
        block and filter read about once, where batches of query rows would each sweep them all again: 1.5x the time
        at 10^7), and memory for one part's hits. A (row, persona) pair that shares several keys can come in several
        parts; within a part it comes once."""
        if not len(keys) or not ranks:
            return
        probe_keys, starts, rows = _band_probe(keys)
        ends, probes = np.append(starts[1:], len(rows)), probes or PROBES_PER_GET
        ranked = np.array(sorted(ranks), dtype=np.uint32)
        for lo in range(0, len(probe_keys), probes):
            with self._timed("band_lookup"):
                owner, entries = _entries(self.db.get(probe_keys[lo : lo + probes]))
            keep = np.isin(entries["sid"], ranked)
            owner, entries = owner[keep] + lo, entries[keep]
            if not len(entries):
                continue
            # Each hit goes to every query row that probed its key (rows sharing a key are adjacent after the sort):
            # a key that E personas hold, probed by R rows, is E x R hits, so they come HITS_PER_PART at a time.
            counts = (ends - starts)[owner]
            total = np.cumsum(counts)
            cuts = np.searchsorted(total, np.arange(HITS_PER_PART, int(total[-1]), HITS_PER_PART), side="right")
            for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(entries)], strict=True):
                part, n = counts[a:b], owner[a:b]
                which = a + np.repeat(np.arange(b - a), part)
                at = np.repeat(starts[n] - np.cumsum(part) + part, part) + np.arange(int(part.sum()))
                out = np.stack((rows[at], entries["sid"][which].astype(np.int64), entries["pos"][which]), axis=1)
                if len(out):
                    yield unique_rows(out)

    def personas(self, sid: np.ndarray, pos: np.ndarray) -> tuple[list[str], list[str]]:
        """(persona ids, texts) of kept personas by (shard id, position)."""
        keys = np.zeros(len(sid), dtype=_PERSONA_KEY)
        keys["tag"], keys["sid"], keys["pos"] = b"p", sid, pos
        ids, texts = [], []
        with self._timed("persona_fetch"):
            values = self.db.get(_as_bytes(keys)) if len(keys) else []
        for value in values:
            if value is None:
                raise LookupError("the hub index lacks a persona it lists: rebuild it (remove its folder)")
            persona_id, text = value.split(b"\0", 1)
            ids.append(persona_id.decode())
            texts.append(text.decode())
        return ids, texts

    def sketches(self, sid: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(m, num_perm) uint8: the MinHash sketches of kept personas by (shard id, position). Each shard's files are
        mapped for the call only and searched for the positions asked, so memory holds the pages of the hits."""
        out = np.zeros((len(sid), self.manifest.layout["num_perm"] if self.manifest.layout else 0), dtype=np.uint8)
        with self._timed("sketch_fetch"):
            sid = np.asarray(sid, dtype=np.int64)
            order = np.argsort(sid, kind="stable")
            bounds = np.flatnonzero(np.diff(sid[order], prepend=-1, append=-1))
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                which, shard_id = order[lo:hi], int(sid[order[lo]])
                stored = self._sketches_path(shard_id)
                if not stored.exists():
                    raise LookupError(f"the hub index lacks shard id {shard_id}'s sketches: catch_up_index first")
                positions = np.load(self._keys_path(shard_id), mmap_mode="r")[:, 0]
                rows = np.minimum(_sorted_search(positions, pos[which].astype(np.uint64)), len(positions) - 1)
                if (positions[rows] != pos[which]).any():
                    raise LookupError("the hub index lacks a persona it lists: rebuild it (remove its folder)")
                out[which] = np.load(stored, mmap_mode="r")[rows]
        return out

    def unsketched(self) -> list[str]:
        """Shards whose sketches are missing (indexed before the index kept them): `set_sketches` completes them."""
        return [s for s, e in self.manifest.shards.items() if e.kept and not self._sketches_path(e.sid).exists()]

    def stored_texts(self, shard: str) -> list[str]:
        """A shard's kept personas' texts in position order (the order of its keys file), from RocksDB."""
        sid = self.manifest.shards[shard].sid
        begin, end = _persona_range(sid)
        texts = []
        iterator = self.db.iter()
        iterator.seek(begin)
        while iterator.valid() and iterator.key() < end:
            texts.append(iterator.value().split(b"\0", 1)[1].decode())
            iterator.next()
        return texts

    def set_sketches(self, shard: str, sketches: np.ndarray) -> None:
        atomic_save_npy(self._sketches_path(self.manifest.shards[shard].sid), np.ascontiguousarray(sketches, np.uint8))

    # ------------------------------------------------------------------ vectors

    def vector_matches(self, queries: np.ndarray, ranks: Mapping[int, int], threshold: float) -> Matches:
        """For each query: the earliest (rank, position) stored vector of the ranked shards with cosine >= threshold
        among the probed lists, with that cosine."""
        n = len(queries)
        best = np.full(n, _NONE, dtype=np.int64)
        similarity = np.full(n, np.nan, dtype=np.float32)
        segments = [
            (sid, rank, self._segment(sid)) for sid, rank in ranks.items() if self._shard_entry(sid).vectors > 0
        ]
        if n and segments:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            with self._timed("vector_probe"):
                probes = self._probe(queries)
            with self._timed("vector_scan"):
                self._scan(queries, probes, segments, earliest_above(threshold, best, similarity))
        found = best != _NONE
        rank_to_sid = {rank: sid for sid, rank in ranks.items()}
        shard_of = self._shard_of()
        sids = np.array([rank_to_sid[int(r)] for r in (best[found] >> 32).tolist()], dtype=np.int64)
        positions = np.where(found, best & 0xFFFFFFFF, -1)
        ids, _ = self.personas(sids, positions[found])
        shard = [None] * n
        persona_id: list[str | None] = [None] * n
        for i, sid, pid in zip(np.flatnonzero(found).tolist(), sids.tolist(), ids, strict=True):
            shard[i], persona_id[i] = shard_of[sid], pid
        return Matches(shard, persona_id, positions, similarity)

    def nearest(self, queries: np.ndarray, k: int, shards: Sequence[str] | None = None) -> list[list[Neighbour]]:
        """Per query its k nearest kept personas by cosine (best first) among `shards` (default: all), through the
        probed lists: persona search. Similarities are exact; only the lists searched are chosen (SEARCH_NPROBE of
        nlist, 4x what dedup probes: a search is a handful of queries)."""
        entries = [e for name, e in self.manifest.shards.items() if (shards is None or name in shards) and e.vectors]
        n = len(queries)
        top_keys = np.full((n, k), _NONE, dtype=np.int64)
        top_sims = np.full((n, k), -np.inf, dtype=np.float32)
        if n and entries and k > 0:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            segments = [(e.sid, e.sid, self._segment(e.sid)) for e in entries]  # keyed by shard id itself
            self._scan(queries, self._probe(queries, SEARCH_NPROBE), segments, nearest_k(top_keys, top_sims))
        shard_of = self._shard_of()
        found = top_keys != _NONE
        sids, positions = (top_keys[found] >> 32), (top_keys[found] & 0xFFFFFFFF)
        ids, texts = self.personas(sids, positions)
        flat = iter(zip(sids.tolist(), positions.tolist(), ids, texts, top_sims[found].tolist(), strict=True))
        return [
            [
                Neighbour(shard_of[sid], pid, text, sim, pos)
                for sid, pos, pid, text, sim in (next(flat) for _ in range(int(row.sum())))
            ]
            for row in found
        ]

    # ------------------------------------------------------------------ adding and removing shards

    def add(self, entries: ShardEntries, layout: dict) -> None:
        """Add a shard's kept personas (replacing what the index held for it)."""
        self.remove(entries.shard)
        self._check_layout(layout, entries.model, entries.vectors)
        sid = self.manifest.next_sid
        self.manifest.next_sid += 1
        positions = np.asarray(entries.positions, dtype=np.uint32)
        if (np.diff(positions.astype(np.int64)) <= 0).any():
            raise ValueError(f"shard {entries.shard}'s positions must increase (they are searched by bisection)")
        from rocksdict import WriteBatch

        # In parts, so that memory holds one part's writes: nothing reads them before the manifest lists the shard.
        for lo in range(0, len(positions), PROBES_PER_GET):
            part = slice(lo, lo + PROBES_PER_GET)
            batch = WriteBatch(raw_mode=True)
            persona_keys = np.zeros(len(positions[part]), dtype=_PERSONA_KEY)
            persona_keys["tag"], persona_keys["sid"], persona_keys["pos"] = b"p", sid, positions[part]
            texts = zip(_as_bytes(persona_keys), entries.persona_ids[part], entries.texts[part], strict=True)
            for key, pid, text in texts:
                batch.put(key, pid.encode() + b"\0" + (text or "").encode())
            self.db.write(batch)
        with self._timed("band_update"):
            self._rewrite_bands(entries.keys, sid, positions, add=True)
        np.save(self._keys_path(sid), np.column_stack((positions.astype(np.uint64), entries.keys)))
        if len(entries.sketches) == len(positions):
            atomic_save_npy(self._sketches_path(sid), np.ascontiguousarray(entries.sketches, np.uint8))
        if len(entries.vectors):
            self.manifest.dim = entries.vectors.shape[1]
            self._write_segment(
                sid,
                np.asarray(entries.vectors, np.float32),
                np.asarray(entries.vector_positions),
                self.manifest.generation,
            )
        self.manifest.shards[entries.shard] = ShardEntry(sid, entries.run_id, len(positions), len(entries.vectors))
        self._save()
        with self._timed("train"):
            self._maybe_train()

    def remove(self, shard: str) -> bool:
        """Remove exactly this shard's entries; False when the index does not hold it."""
        entry = self.manifest.shards.pop(shard, None)
        if entry is None:
            return False
        self._save()  # from here on no lookup sees the shard

        keys_path = self._keys_path(entry.sid)
        if keys_path.exists():
            stored = np.load(keys_path)
            self._rewrite_bands(stored[:, 1:], entry.sid, stored[:, 0].astype(np.uint32), add=False)
        self.db.delete_range(*_persona_range(entry.sid))
        for path in (self.folder / "segments").glob(f"{entry.sid:08d}-*"):
            path.unlink()
        keys_path.unlink(missing_ok=True)
        self._sketches_path(entry.sid).unlink(missing_ok=True)
        return True

    def _rewrite_bands(self, keys: np.ndarray, sid: int, positions: np.ndarray, *, add: bool) -> None:
        """Add this shard's (sid, position) to each of its band keys, or take them out; entries of shards the
        manifest no longer lists are dropped on the way (and this shard's, left by an add that crashed). Every key
        is read first, PROBES_PER_GET at a time into arrays (8 B an entry); then the new values are written as many
        at a time. (Reading a part after writing the one before read 279 GB for the 6.7 million keys of a
        10^6-persona shard; one multi_get of all of them held ~1.5 GB more at the peak.)"""
        if not len(keys):
            return
        from rocksdict import WriteBatch

        all_keys, all_starts, rows = _band_probe(keys)
        all_ends = np.append(all_starts[1:], len(rows))
        live = np.array(sorted(e.sid for e in self.manifest.shards.values()), dtype=np.uint32)
        stored = []  # per part: (entries' keys within the part, entries kept, which keys existed)
        for first in range(0, len(all_keys), PROBES_PER_GET):
            found = self.db.get(all_keys[first : first + PROBES_PER_GET])
            owner, entries = _entries(found)
            keep = np.isin(entries["sid"], live) & (entries["sid"] != sid)
            stored.append((owner[keep], entries[keep], np.array([v is not None for v in found], dtype=bool)))
        for part, first in enumerate(range(0, len(all_keys), PROBES_PER_GET)):
            unique_bytes = all_keys[first : first + PROBES_PER_GET]
            starts, ends = all_starts[first : first + PROBES_PER_GET], all_ends[first : first + PROBES_PER_GET]
            owner, entries, existed = stored[part]
            stored[part] = None
            if add:
                members = ends - starts
                mine = np.zeros(int(members.sum()), dtype=_ENTRY)
                mine["sid"], mine["pos"] = sid, positions[rows[starts[0] : ends[-1]]]
                owner = np.concatenate((owner, np.repeat(np.arange(len(starts)), members)))
                entries = np.concatenate((entries, mine))
            grouped = np.argsort(owner, kind="stable")  # a key's earlier entries stay first
            owner, buffer = owner[grouped], entries[grouped].tobytes()
            bounds = np.searchsorted(owner, np.arange(len(starts) + 1)) * _ENTRY.itemsize
            batch = WriteBatch(raw_mode=True)
            for k, key in enumerate(unique_bytes):
                lo, hi = int(bounds[k]), int(bounds[k + 1])
                if hi > lo:
                    batch.put(key, buffer[lo:hi])
                elif existed[k]:
                    batch.delete(key)
            self.db.write(batch)

    def _keys_path(self, sid: int) -> Path:
        return self.folder / "segments" / f"{sid:08d}-keys.npy"

    def _sketches_path(self, sid: int) -> Path:
        return self.folder / "segments" / f"{sid:08d}-sketches.npy"

    def _check_layout(self, layout: dict, model: str | None, vectors: np.ndarray) -> None:
        if self.manifest.layout is None:
            self.manifest.layout = layout
        if self.manifest.layout != layout:
            raise ValueError(f"band layout {layout} differs from the index's {self.manifest.layout}: rebuild it")
        if len(vectors):
            if self.manifest.model is None:
                self.manifest.model = model
            if self.manifest.model != model:
                raise ValueError(f"vectors of {model} differ from the index's {self.manifest.model}: rebuild it")

    def compatible(self, layout: dict, model: str | None) -> bool:
        """Whether the index's entries were made the way this run makes them (else it must be rebuilt)."""
        same_layout = self.manifest.layout in (None, layout)
        same_model = self.manifest.model is None or model is None or self.manifest.model == model
        return same_layout and same_model

    def clear(self) -> None:
        """Forget everything (before a rebuild with other settings): the index's own folder only."""
        self.close()
        for name in ("rocksdb", "segments"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        (self.folder / "segments").mkdir()
        self.manifest = Manifest()
        self._save()

    def _save(self) -> None:
        self.manifest.save(self.folder / "manifest.json")

    # ------------------------------------------------------------------ size and the object-store mirror

    def stats(self) -> dict[str, int]:
        sizes = {"rocksdb": 0, "vectors": 0, "keys": 0, "sketches": 0}
        for path in self.folder.rglob("*"):
            if path.is_file():
                part = (
                    "rocksdb"
                    if "rocksdb" in path.parts
                    else next((p for p in ("keys", "sketches") if path.name.endswith(f"-{p}.npy")), "vectors")
                )
                sizes[part] += path.stat().st_size
        return {
            **{f"{k}_bytes": v for k, v in sizes.items()},
            "shards": len(self.manifest.shards),
            "personas": sum(e.kept for e in self.manifest.shards.values()),
            "vectors": self.manifest.vectors,
            "nlist": self.manifest.nlist,
        }


def _band_probe(keys: np.ndarray) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """The distinct RocksDB keys of every (row, band) of `keys` (n, bands), in key order; where each one's rows start
    in `rows`, the query rows in that order."""
    n, bands = keys.shape
    band = np.tile(np.arange(bands, dtype=np.uint16), n)
    key = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)
    order = np.lexsort((key, band))  # numeric order = byte order of the big-endian records
    band, key, rows = band[order], key[order], np.repeat(np.arange(n, dtype=np.int64), bands)[order]
    starts = np.flatnonzero(np.concatenate(([True], (band[1:] != band[:-1]) | (key[1:] != key[:-1]))))
    records = np.zeros(len(starts), dtype=_BAND_KEY)
    records["tag"], records["band"], records["key"] = b"b", band[starts], key[starts]
    return _as_bytes(records), starts, rows


def _entries(values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """The (shard id, position) entries of RocksDB values, and the index of the value each came from."""
    lengths = np.fromiter((len(v) if v is not None else 0 for v in values), dtype=np.int64, count=len(values))
    entries = np.frombuffer(b"".join(v for v in values if v is not None), dtype=_ENTRY)
    return np.repeat(np.arange(len(values)), lengths // _ENTRY.itemsize), entries


def _persona_range(sid: int) -> tuple[bytes, bytes]:
    """[first, end) RocksDB keys of a shard's persona records."""
    bounds = np.zeros(2, dtype=_PERSONA_KEY)
    bounds["tag"], bounds["sid"] = b"p", [sid, sid + 1]
    begin, end = _as_bytes(bounds)
    return begin, end


def unique_rows(rows: np.ndarray) -> np.ndarray:
    """np.unique(rows, axis=0) for an (n, k) integer array, by lexsort: 3.7x faster (numpy compares rows as opaque
    bytes), which counts at 10^7 band hits a shard."""
    if len(rows) < 2:
        return rows
    ordered = rows[np.lexsort(rows.T[::-1])]
    return ordered[np.concatenate(([True], (ordered[1:] != ordered[:-1]).any(axis=1)))]


def _sorted_search(column: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.searchsorted(column, values, "left") by bisection over fancy indexing: on a strided memory-mapped column
    numpy's own searchsorted copies the whole column first (every page of the file); this reads ~log2(n) elements
    a value."""
    lo, hi = np.zeros(len(values), dtype=np.int64), np.full(len(values), len(column), dtype=np.int64)
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        below = np.zeros(len(values), dtype=bool)
        below[open_] = column[mid[open_]] < values[open_]
        lo = np.where(open_ & below, mid + 1, lo)
        hi = np.where(open_ & ~below, mid, hi)
    return lo


def _as_bytes(records: np.ndarray) -> list[bytes]:
    """Fixed-size records as byte strings, sorted by byte order already when the records are sorted."""
    size = records.dtype.itemsize
    buffer = records.tobytes()
    return [buffer[i : i + size] for i in range(0, len(buffer), size)]

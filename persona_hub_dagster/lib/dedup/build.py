"""One shard of the hub built on the hub index (index.py): the earlier shards as the passes ask about them
(`IndexedPrior`: probes by key, fetches only what matched), the shard's tables written and its entries added
(`build_shard`), and the index kept in step with the tables (`catch_up_index`: the upgrade path for hubs built
before the index, and how re-runs and unregistered shards leave it). The passes themselves are in hub.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup import minhash
from persona_hub_dagster.lib.dedup.hub import (
    RUNS_SCHEMA,
    EmbedderLike,
    HubSettings,
    dedup_shard,
    hub_shards,
    load_candidates,
)
from persona_hub_dagster.lib.dedup.index import HubIndex, ShardEntries, unique_rows
from persona_hub_dagster.lib.embeddings import vector_array
from persona_hub_dagster.lib.storage import DeltaStore


def index_layout(settings: HubSettings) -> dict:
    """How band keys are made: the index's entries are comparable only with keys made the same way."""
    bands, rows = minhash.choose_bands(settings.minhash_threshold, settings.num_perm, settings.min_recall)
    return {"num_perm": settings.num_perm, "seed": settings.seed, "ngram": settings.ngram, "bands": bands, "rows": rows}


def minhash_entries_of(texts: Sequence[str], settings: HubSettings) -> tuple[np.ndarray, np.ndarray]:
    """(band keys, sketches) of texts, as the hub's MinHash pass makes them."""
    layout = index_layout(settings)
    sigs = minhash.signatures(minhash.tokenize_batch(texts, settings.ngram), settings.num_perm, settings.seed)
    return minhash.band_keys(sigs, layout["bands"], layout["rows"]), minhash.sketches(sigs)


class IndexedPrior:
    """PriorShards on the hub index: probes by key, estimates each hit from its sketch, fetches only the texts of
    the plausible ones."""

    def __init__(self, index: HubIndex):
        self.index = index

    def _ranks(self, prefix: Sequence[str]) -> dict[int, int]:
        missing = self.index.missing(prefix)
        if missing:
            raise LookupError(f"the hub index lacks the earlier shards {missing}: catch_up_index first")
        return self.index.ranks(prefix)

    def minhash_matches(self, prefix, texts, keys, sketches, settings) -> dict[int, tuple[str, str, float]]:
        """Band hits come in parts (index.band_hit_chunks), and each part keeps only the hits whose sketch estimate
        reaches the threshold less minhash.ESTIMATE_MARGIN (~3.5 standard deviations at the threshold, as within a
        shard): memory holds one part's hits whatever the hub's size, and a band key that thousands of earlier
        personas share costs a candidate bytes, not thousands of fetched texts. The plausible hits are verified."""
        plausible = []
        for hits in self.index.band_hit_chunks(keys, self._ranks(prefix)):  # (row, shard id, position)
            estimate = minhash.sketch_jaccard(sketches[hits[:, 0]], self.index.sketches(hits[:, 1], hits[:, 2]))
            plausible.append(hits[estimate >= settings.minhash_threshold - minhash.ESTIMATE_MARGIN])
        hits = unique_rows(np.concatenate(plausible)) if plausible else np.zeros((0, 3), dtype=np.int64)
        return self._verified(prefix, texts, hits, settings)

    def _verified(self, prefix, texts, hits, settings) -> dict[int, tuple[str, str, float]]:
        """Per row of texts with a hit that passes exact Jaccard: the earliest (rank, position) such hit."""
        if not len(hits):
            return {}
        earlier, which = np.unique(hits[:, 1:], axis=0, return_inverse=True)
        earlier_ids, earlier_texts = self.index.personas(earlier[:, 0], earlier[:, 1])
        rows = np.unique(hits[:, 0])
        batch = minhash.tokenize_batch([texts[r] for r in rows.tolist()] + earlier_texts, settings.ngram)
        pairs = np.stack((np.searchsorted(rows, hits[:, 0]), len(rows) + which.reshape(-1)), axis=1)
        scores = minhash.exact_jaccard(batch, batch, pairs)
        verified = scores >= settings.minhash_threshold
        hit, of, scores = hits[verified], which.reshape(-1)[verified], scores[verified]
        if not len(hit):
            return {}
        ranks = self.index.ranks(prefix)
        order_key = np.array([ranks[s] for s in hit[:, 1].tolist()], dtype=np.int64) << 32 | hit[:, 2]
        by_row = np.lexsort((order_key, hit[:, 0]))  # per candidate row, its earliest verified persona first
        first = by_row[np.concatenate(([True], hit[by_row, 0][1:] != hit[by_row, 0][:-1]))]
        shard_of = {e.sid: s for s, e in self.index.manifest.shards.items()}
        return {
            int(hit[k, 0]): (earlier_ids[of[k]], shard_of[int(hit[k, 1])], float(scores[k])) for k in first.tolist()
        }

    def semantic_matches(self, prefix, vectors, threshold) -> dict[int, tuple[str, str, float]]:
        found = self.index.vector_matches(vectors, self._ranks(prefix), threshold)
        return {
            row: (found.persona_id[row], found.shard[row], float(found.similarity[row]))
            for row in range(len(vectors))
            if found.persona_id[row] is not None
        }


def catch_up_index(
    index: HubIndex, store: DeltaStore, settings: HubSettings, embedder: EmbedderLike | None
) -> dict[str, list[str]]:
    """Make the index hold exactly the hub's shards as its tables have them: shards whose hub run changed or that
    left the hub (re-run elsewhere, unregistered) are removed, hub shards it lacks are added from their tables. A hub
    built before the index is indexed here on first use; other band settings or another embedding model rebuild it.
    Each shard is read on its own, so memory stays that of one shard."""
    layout = index_layout(settings)
    model = embedder.identity if embedder is not None and settings.semantic_threshold is not None else None
    if not index.compatible(layout, model):
        index.clear()
    index.upgrade_tables()
    present = hub_shards(store)
    runs = (
        dict(store.scan(tables.HUB_RUNS).select("shard", "run_id").collect().iter_rows())
        if store.exists(tables.HUB_RUNS)
        else {}
    )
    removed = [s for s, entry in list(index.manifest.shards.items()) if s not in present or entry.run_id != runs.get(s)]
    for shard in removed:
        index.remove(shard)
    added = [s for s in present if s not in index.manifest.shards]
    for shard in added:
        index.add(entries_from_tables(store, shard, runs.get(shard, ""), settings, embedder if model else None), layout)
    return {"removed": removed, "added": added, "sketched": complete_sketches(index, settings)}


def complete_sketches(index: HubIndex, settings: HubSettings) -> list[str]:
    """Sketch the shards of an index built before it kept MinHash sketches, from the texts it holds, one shard at a
    time. Returns the shards sketched."""
    missing = index.unsketched()
    for shard in missing:
        index.set_sketches(shard, minhash_entries_of(index.stored_texts(shard), settings)[1])
    return missing


def entries_from_tables(
    store: DeltaStore, shard: str, run_id: str, settings: HubSettings, embedder: EmbedderLike | None
) -> ShardEntries:
    """A hub shard's index entries from its tables: band keys recomputed from the kept texts; the stored vectors of
    the current model, the others re-embedded (as the hub did for every run before the index)."""
    hub = store.scan(tables.PERSONA_HUB, [shard]).select("persona_id", "persona", "position").collect().sort("position")
    texts = hub["persona"].fill_null("").to_list()
    positions = hub["position"].to_numpy().astype(np.int64)
    vectors, vector_positions = np.zeros((0, 0), dtype=np.float32), positions[:0]
    if embedder is not None and store.exists(tables.HUB_EMBEDDINGS):
        stored = (
            store.scan(tables.HUB_EMBEDDINGS, [shard])
            .select("persona_id", "model", "vector")
            .collect()
            .join(hub.select("persona_id", "persona", "position"), on="persona_id")
            .sort("position")
        )
        current = stored.filter(pl.col("model") == embedder.identity)
        other = stored.filter(pl.col("model") != embedder.identity)
        readable = [why is None for why in embedder.unreadable(other["persona"].to_list())]
        other = other.filter(pl.Series(readable, dtype=pl.Boolean))
        parts = [(current["position"].to_numpy(), vector_array(current["vector"]))]
        if other.height:
            parts.append((other["position"].to_numpy(), embedder.encode(other["persona"].to_list())))
        vector_positions = np.concatenate([p for p, _ in parts]).astype(np.int64)
        vectors = np.concatenate([v for _, v in parts if len(v)]) if any(len(v) for _, v in parts) else vectors
        order = np.argsort(vector_positions, kind="stable")
        vector_positions, vectors = vector_positions[order], vectors[order] if len(vectors) else vectors
    return ShardEntries(
        shard,
        run_id,
        positions,
        hub["persona_id"].to_list(),
        texts,
        *minhash_entries_of(texts, settings),
        vector_positions,
        vectors,
        embedder.identity if embedder is not None and len(vectors) else None,
    )


def open_index(store: DeltaStore, cache_dir: str | None = None) -> HubIndex:
    """The hub index that lives with the store's tables."""
    return HubIndex.for_location(store.table_uri(tables.HUB_INDEX_PATH), cache_dir)


def build_shard(
    store: DeltaStore,
    index: HubIndex,
    shard: str,
    *,
    prefix: Sequence[str],
    prefix_expected: Sequence[str],
    settings: HubSettings,
    embedder: EmbedderLike | None,
    run_id: str,
    commit_metadata: dict[str, str] | None = None,
) -> tuple[dict[str, int], dict]:
    """One shard of the hub: out of the index (a re-run replaces its entries), through the passes against the
    earlier shards, its tables written (each partition atomically), then into the index. The index follows the
    tables, so a crash in between is repaired by the next run's `catch_up_index`. Returns the decisions' counts and
    the writes by table."""
    index.remove(shard)
    candidates = load_candidates(store, shard)
    result = dedup_shard(
        IndexedPrior(index), shard, candidates, prefix=prefix, settings=settings, embedder=embedder, run_id=run_id
    )
    run = pl.DataFrame([{**result.run, "prefix_expected": list(prefix_expected)}], schema=RUNS_SCHEMA)
    writes = {}
    for table, frame in (
        (tables.PERSONA_HUB, result.hub),
        (tables.PERSONA_HUB_DECISIONS, result.decisions),
        (tables.HUB_MINHASH_BANDS, result.bands),
        (tables.HUB_EMBEDDINGS, result.embeddings),
        (tables.HUB_RUNS, run),
    ):
        writes[table] = store.write_partitions(table, frame, partitions=[shard], commit_metadata=commit_metadata)
    entries, counts = result.index_entries, result.counts
    del result, run, frame  # the written frames (~1.5 GB at 10^6 candidates): not held through the index's add
    index.add(entries, index_layout(settings))
    return counts, writes

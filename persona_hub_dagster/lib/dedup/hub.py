"""Building the persona hub one shard at a time: every candidate persona of the shard is kept or dropped, against
the shard itself and against every hub shard registered before it, with the reason and the persona it duplicates.

Passes, in this order:
1. Quality filters (filters.py): a leftover prompt frame is stripped first (the hub keeps the stripped text, the
   decisions table the original and `quality_edit`); a rejected persona can never become the representative that
   makes a good one a duplicate.
2. MinHash (minhash.py): against earlier shards first (their kept personas' LSH band keys are probed in the hub
   index, index.py, so earlier shards are neither recomputed nor read whole; a band collision is verified by exact
   Jaccard against the earlier persona's text, fetched from the index), then within the shard (keep-first).
3. Embeddings (semantic.py): against earlier shards' kept embeddings (the index's inverted file, every similarity
   exact), then within the shard (keep-first). The embedding model is part of the settings; when it changes, the
   index is rebuilt from the hub's texts (`catch_up_index`).
   Only personas the model can read take part (`embedder.unreadable`, e.g. Thai for an English-only model); the
   others keep their MinHash verdict and their decision says `semantic_check = "skipped (<why>)"`.

Earlier shards never lose personas: a shard only ever drops its own candidates. The passes ask about earlier shards
through `PriorShards`; build.py answers on the hub index and writes a shard's tables and entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup import minhash
from persona_hub_dagster.lib.dedup.filters import quality_filter, strip_prompt_frame
from persona_hub_dagster.lib.dedup.index import ShardEntries
from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first
from persona_hub_dagster.lib.embeddings import vector_column
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.storage import DeltaStore

RUNS_SCHEMA = {
    "shard": pl.String,
    "deduplicated_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String,
    "prefix_present": pl.List(pl.String),
    "prefix_expected": pl.List(pl.String),
    "hub_config": pl.String,
    "candidates": pl.Int64,
    "kept": pl.Int64,
}
REQUIRED_COLUMNS = ("persona_id", "persona", "shard")


@dataclass(frozen=True)
class HubSettings:
    minhash_threshold: float = setting(0.9, "Word n-gram Jaccard at which personas are duplicates.")
    num_perm: int = setting(128, "MinHash permutations.")
    ngram: int = setting(1, "Word n-gram size for MinHash.")
    seed: int = setting(1, "Seeds the MinHash permutations.")
    min_recall: float = setting(0.95, "LSH bands are chosen so that a pair at the threshold is found with this chance.")
    semantic_threshold: float | None = setting(
        0.9,
        "Embedding cosine at which personas are duplicates (0.5 for diversity over count); null: skip the pass. "
        "Thresholds are per embedding model: the fast (model2vec) embeddings call for ~0.89 where MiniLM has 0.9.",
    )
    quality_filter: bool = setting(True, "Reject empty, truncated, refusals, template echoes, ...")

    def fingerprint(self, embedding_identity: str | None) -> str:
        """Changes with anything that changes which personas are kept."""
        # version 2: quality rules by evidence, script-aware units, no semantic decision on unreadable text.
        payload = json.dumps({**asdict(self), "embedding": embedding_identity, "version": 2}, sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


class EmbedderLike(Protocol):
    """What the hub needs of lib.embeddings.Embedder."""

    identity: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def unreadable(self, texts: Sequence[str]) -> list[str | None]:
        """Per text: why the model cannot read it (its embedding must decide nothing), or None."""
        ...


@dataclass
class ShardResult:
    hub: pl.DataFrame
    decisions: pl.DataFrame
    bands: pl.DataFrame
    embeddings: pl.DataFrame
    run: dict
    index_entries: ShardEntries
    counts: dict[str, int] = field(default_factory=dict)


def load_candidates(store: DeltaStore, shard: str) -> pl.DataFrame:
    """The shard's candidate personas from text_personas and, when it exists, expanded_personas, in a stable order
    (the order keep-first follows): text personas first, then expansions by hop, then by text and persona id."""
    frames = []
    for rank, table in enumerate(tables.HUB_SOURCES):
        if not store.exists(table):
            continue
        frame = store.scan(table, [shard]).collect()
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{store.table_uri(table)} lacks the columns {missing} persona_hub needs")
        frames.append(frame.with_columns(source=pl.lit(table.name), source_rank=pl.lit(rank)))
    if not frames:
        return pl.DataFrame(
            schema={
                "persona_id": pl.String,
                "persona": pl.String,
                "shard": pl.String,
                "source": pl.String,
                "source_rank": pl.Int32,
            }
        )
    frame = pl.concat(frames, how="diagonal_relaxed")
    order = ["source_rank"] + [c for c in ("hop", "text_id") if c in frame.columns] + ["persona_id"]
    return frame.sort(order, nulls_last=False).drop("source_rank")


def hub_lineage(store: DeltaStore) -> dict[str, tuple[tuple[tables.Table, str], ...]]:
    """Column lineage of persona_hub: each column from the candidate tables that have it (kept rows are copied)."""
    deps: dict[str, list[tuple[tables.Table, str]]] = {}
    for table in tables.HUB_SOURCES:
        if store.exists(table):
            for column in store.scan(table).collect_schema().names():
                deps.setdefault(column, []).append((table, column))
    return {column: tuple(sources) for column, sources in deps.items()}


def hub_shards(store: DeltaStore) -> list[str]:
    """The shards whose hub is built: those with a hub run record, written last of a shard's hub tables. Not the
    partitions of persona_hub itself: a shard whose candidates were all dropped is built and has no hub rows."""
    return store.partitions(tables.HUB_RUNS)


def prefix_shards(store: DeltaStore, registry_frame: pl.DataFrame, shard: str) -> tuple[list[str], list[str]]:
    """(shards registered before `shard`, those of them already in the hub), both in registration order."""
    ordered = registry_frame.sort("registration_seq", "shard")["shard"].to_list()
    expected = ordered[: ordered.index(shard)] if shard in ordered else ordered
    present = set(hub_shards(store))
    return expected, [s for s in expected if s in present]


@dataclass
class Decisions:
    """Each candidate's fate as the passes run: alive until a pass drops it, with the reason and what it duplicates."""

    ids: list[str]
    alive: np.ndarray
    reason: list[str | None]
    duplicate_of: list[str | None]
    duplicate_shard: list[str | None]
    similarity: np.ndarray
    quality_edit: list[str | None]  # what the quality pass changed in a persona it kept (e.g. "prompt_frame")
    semantic_check: list[str | None]  # "skipped (<why>)" when the embedder could not read the persona

    @classmethod
    def start(cls, ids: list[str]) -> Decisions:
        n = len(ids)
        return cls(
            ids,
            np.ones(n, dtype=bool),
            [None] * n,
            [None] * n,
            [None] * n,
            np.full(n, np.nan, np.float32),
            [None] * n,
            [None] * n,
        )

    def drop(
        self, i: int, reason: str, of: str | None = None, of_shard: str | None = None, score: float | None = None
    ) -> None:
        self.alive[i] = False
        self.reason[i], self.duplicate_of[i], self.duplicate_shard[i] = reason, of, of_shard
        if score is not None:
            self.similarity[i] = score

    def counts(self) -> dict[str, int]:
        counts = {"candidates": len(self.ids), "kept": int(self.alive.sum())}
        notes = (
            self.reason,
            [f"quality_edit:{e}" for e in self.quality_edit if e],
            [f"semantic_check:{c}" for c in self.semantic_check if c],
        )
        for note in (n for column in notes for n in column):
            if note is not None:
                counts[note] = counts.get(note, 0) + 1
        return counts


class PriorShards(Protocol):
    """The kept personas of earlier shards, as the passes ask about them: IndexedPrior in the hub; tests hold it
    against a reference that reads the whole tables, as the hub did before the index."""

    def minhash_matches(
        self, prefix: Sequence[str], texts: list[str], keys: np.ndarray, sketches: np.ndarray, settings: HubSettings
    ) -> dict[int, tuple[str, str, float]]:
        """Per row of texts/keys/sketches with a verified near-duplicate among the prefix's kept personas: the
        earliest such persona (registration order, then hub position), its shard, and the exact Jaccard."""
        ...

    def semantic_matches(
        self, prefix: Sequence[str], vectors: np.ndarray, threshold: float
    ) -> dict[int, tuple[str, str, float]]:
        """Per row of vectors with a kept prefix vector at cosine >= threshold: the earliest one, its shard, the
        cosine."""
        ...


def dedup_shard(
    prior: PriorShards,
    shard: str,
    candidates: pl.DataFrame,
    *,
    prefix: Sequence[str],
    settings: HubSettings,
    embedder: EmbedderLike | None,
    run_id: str,
) -> ShardResult:
    """The shard's candidates through the three passes, against the earlier shards `prefix` and the shard itself."""
    texts = candidates["persona"].fill_null("").to_list()
    decisions = Decisions.start(candidates["persona_id"].to_list())
    if settings.quality_filter:
        texts = quality_pass(texts, decisions)
    keys, sketches = minhash_pass(prior, shard, prefix, texts, decisions, settings)
    vectors = semantic_pass(prior, shard, prefix, texts, decisions, settings, embedder)
    return shard_result(
        shard, prefix, candidates, texts, decisions, keys, sketches, vectors, settings, embedder, run_id
    )


def quality_pass(texts: list[str], decisions: Decisions) -> list[str]:
    """Strips leftover prompt frames, then rejects by the quality rules; returns the texts the later passes and the
    hub use (the decisions table keeps the originals)."""
    cleaned = []
    for i, text in enumerate(texts):
        stripped = strip_prompt_frame(text)
        if stripped != text:
            decisions.quality_edit[i] = "prompt_frame"
        cleaned.append(stripped)
    for i, reason in enumerate(quality_filter(cleaned)):
        if reason is not None:
            decisions.drop(i, f"quality:{reason}")
    return cleaned


def minhash_pass(
    prior: PriorShards, shard: str, prefix: Sequence[str], texts: list[str], decisions: Decisions, settings: HubSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicates by MinHash, verified by exact Jaccard: against earlier shards first, then within the shard
    (keep-first). Returns every candidate's LSH band keys and sketches (the kept ones go to the index)."""
    batch = minhash.tokenize_batch(texts, settings.ngram)
    sigs = minhash.signatures(batch, settings.num_perm, settings.seed)
    bands, rows = minhash.choose_bands(settings.minhash_threshold, settings.num_perm, settings.min_recall)
    keys, sketches = minhash.band_keys(sigs, bands, rows), minhash.sketches(sigs)
    live = np.flatnonzero(decisions.alive)
    if prefix and len(live):
        matches = prior.minhash_matches(prefix, [texts[i] for i in live], keys[live], sketches[live], settings)
        for row, (prior_id, prior_shard, score) in matches.items():
            decisions.drop(int(live[row]), "minhash", prior_id, prior_shard, score)
    live = np.flatnonzero(decisions.alive)
    sub = batch.subset(live)
    within = minhash.cluster_tokenized(
        sub,
        threshold=settings.minhash_threshold,
        num_perm=settings.num_perm,
        seed=settings.seed,
        min_recall=settings.min_recall,
    )
    dropped = np.flatnonzero(within.representative != np.arange(len(live)))
    if len(dropped):
        pairs = np.stack((within.representative[dropped], dropped), axis=1)
        scores = minhash.exact_jaccard(sub, sub, pairs)
        for local, rep, score in zip(dropped.tolist(), pairs[:, 0].tolist(), scores.tolist(), strict=True):
            decisions.drop(int(live[local]), "minhash", decisions.ids[live[rep]], shard, score)
    return keys, sketches


def semantic_pass(
    prior: PriorShards,
    shard: str,
    prefix: Sequence[str],
    texts: list[str],
    decisions: Decisions,
    settings: HubSettings,
    embedder: EmbedderLike | None,
) -> np.ndarray:
    """Embedding near-duplicates (keep-first) among the personas the embedder can read: against earlier shards' kept
    personas, then within the shard. Returns the vectors of the kept candidates that were embedded, in candidate
    order (one per persona with `semantic_check` None)."""
    live = np.flatnonzero(decisions.alive)
    if settings.semantic_threshold is None or embedder is None or not len(live):
        return np.zeros((0, 0), dtype=np.float32)
    why_unreadable = embedder.unreadable([texts[i] for i in live])
    for i, why in zip(live.tolist(), why_unreadable, strict=True):
        if why is not None:
            decisions.semantic_check[i] = f"skipped ({why})"
    live = live[[why is None for why in why_unreadable]]
    if not len(live):
        return np.zeros((0, 0), dtype=np.float32)
    vectors = embedder.encode([texts[i] for i in live])
    # Earlier shards first: a persona with a kept match there is dropped for it and represents nothing here (the
    # same decisions as one keep-first pass over the earlier shards' vectors followed by this shard's).
    earlier = prior.semantic_matches(prefix, vectors, settings.semantic_threshold) if prefix else {}
    for row, (of, of_shard, score) in earlier.items():
        decisions.drop(int(live[row]), "semantic", of, of_shard, score)
    rest = np.array([row for row in range(len(live)) if row not in earlier], dtype=np.int64)
    if len(rest) < len(live):
        vectors = vectors[rest]  # the shard's vectors are held once (1 GB per 10^6 at 256-d)
    result = semantic_keep_first(vectors, threshold=settings.semantic_threshold)
    for local in np.flatnonzero(~result.kept).tolist():
        of = decisions.ids[live[rest[result.representative[local]]]]
        decisions.drop(int(live[rest[local]]), "semantic", of, shard, float(result.similarity[local]))
    return vectors[result.kept]


def shard_result(
    shard: str,
    prefix: Sequence[str],
    candidates: pl.DataFrame,
    texts: Sequence[str],
    decisions: Decisions,
    keys: np.ndarray,
    sketches: np.ndarray,
    vectors: np.ndarray,
    settings: HubSettings,
    embedder: EmbedderLike | None,
    run_id: str,
) -> ShardResult:
    """The tables of the shard: hub (with the personas as the passes saw them, `texts`), decisions (with the
    candidates' original personas), the kept personas' band keys and vectors, the run record; and its index entries
    (with `keys` and `sketches`, every candidate's, the kept ones')."""
    n = candidates.height
    kept = np.flatnonzero(decisions.alive)
    fingerprint = settings.fingerprint(embedder.identity if embedder is not None else None)
    now = datetime.now(UTC)
    positions = pl.Series(np.arange(n), dtype=pl.Int64)
    decision_frame = candidates.select(
        "persona_id", "shard", "source", "persona", *[c for c in ("text_id",) if c in candidates.columns]
    ).with_columns(
        position=positions,
        decision=pl.Series(["kept" if a else "dropped" for a in decisions.alive], dtype=pl.String),
        reason=pl.Series(decisions.reason, dtype=pl.String),
        duplicate_of=pl.Series(decisions.duplicate_of, dtype=pl.String),
        duplicate_of_shard=pl.Series(decisions.duplicate_shard, dtype=pl.String),
        similarity=pl.Series(decisions.similarity, dtype=pl.Float32).fill_nan(None),
        quality_edit=pl.Series(decisions.quality_edit, dtype=pl.String),
        semantic_check=pl.Series(decisions.semantic_check, dtype=pl.String),
        hub_config=pl.lit(fingerprint),
        decided_at=pl.lit(now),
        run_id=pl.lit(run_id),
    )
    hub = (
        candidates.with_columns(
            # The stripped text where the quality pass edited the persona; otherwise the candidate's own (nulls too).
            persona=pl.coalesce(
                pl.Series(values=[t if e else None for t, e in zip(texts, decisions.quality_edit, strict=True)]),
                pl.col("persona"),
            ),
            position=positions,
        )
        .filter(pl.Series(decisions.alive))
        .with_columns(hub_config=pl.lit(fingerprint), run_id=pl.lit(run_id))
    )
    kept_ids = pl.Series(decisions.ids, dtype=pl.String).gather(kept)
    embedded = kept[[decisions.semantic_check[i] is None for i in kept.tolist()]] if len(vectors) else kept[:0]
    bands = keys.shape[1]
    band_frame = pl.DataFrame(
        {
            "shard": pl.repeat(shard, len(kept) * bands, eager=True),
            "persona_id": kept_ids.gather(np.repeat(np.arange(len(kept)), bands)),
            "band": np.tile(np.arange(bands, dtype=np.int16), len(kept)),
            "key": keys[kept].reshape(-1).view(np.int64) if len(kept) else np.zeros(0, dtype=np.int64),
        },
        schema={"shard": pl.String, "persona_id": pl.String, "band": pl.Int16, "key": pl.Int64},
    )
    embedding_frame = pl.DataFrame(
        {
            "shard": pl.repeat(shard, len(embedded), eager=True),
            "persona_id": pl.Series(decisions.ids, dtype=pl.String).gather(embedded),
            "model": pl.repeat(embedder.identity if embedder else "", len(embedded), eager=True),
            # From the flat float32 buffer (no Python floats: 11 KB per vector that way, measured).
            "vector": vector_column(vectors),
        },
        schema={"shard": pl.String, "persona_id": pl.String, "model": pl.String, "vector": pl.List(pl.Float32)},
    )
    run = {
        "shard": shard,
        "deduplicated_at": now,
        "run_id": run_id,
        "prefix_present": list(prefix),
        "hub_config": fingerprint,
        "candidates": n,
        "kept": len(kept),
    }
    kept_texts = [texts[i] for i in kept.tolist()]
    entries = ShardEntries(
        shard,
        run_id,
        kept,
        kept_ids.to_list(),
        kept_texts,
        keys[kept],
        sketches[kept],
        embedded,
        vectors if len(embedded) else np.zeros((0, 0), dtype=np.float32),
        embedder.identity if embedder is not None and len(embedded) else None,
    )
    return ShardResult(hub, decision_frame, band_frame, embedding_frame, run, entries, decisions.counts())

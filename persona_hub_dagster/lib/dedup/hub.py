"""Building the persona hub one shard at a time: every candidate persona of the shard is kept or dropped, against
the shard itself and against every hub shard registered before it, with the reason and the persona it duplicates.

Passes, in this order:
1. Quality filters (filters.py): a rejected persona can never become the representative that makes a good one a
   duplicate.
2. MinHash (minhash.py): against earlier shards first (their kept personas' LSH band keys are in Delta, so earlier
   shards are not recomputed; a band collision is verified by exact Jaccard against the earlier persona's text), then
   within the shard (keep-first).
3. Embeddings (semantic.py): against earlier shards' kept embeddings (stored in Delta next to the hub), then within
   the shard (keep-first). The embedding model is part of the settings; vectors of another model are recomputed.

Earlier shards never lose personas: a shard only ever drops its own candidates.
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

from persona_hub_dagster.lib.dedup import minhash
from persona_hub_dagster.lib.dedup.filters import quality_filter
from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first
from persona_hub_dagster.lib.storage import DeltaStore

HUB_TABLE = ("persona_hub",)
DECISIONS_TABLE = ("persona_hub_decisions",)
BANDS_TABLE = ("_index", "persona_hub", "minhash_bands")
EMBEDDINGS_TABLE = ("_index", "persona_hub", "embeddings")
RUNS_TABLE = ("_index", "persona_hub", "runs")
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
CANDIDATE_SOURCES = (("text_personas",), ("expanded_personas",))
REQUIRED_COLUMNS = ("persona_id", "persona", "shard")


@dataclass(frozen=True)
class HubSettings:
    minhash_threshold: float = 0.9
    num_perm: int = 128
    ngram: int = 1
    seed: int = 1
    min_recall: float = 0.95
    semantic_threshold: float | None = 0.9  # None: no embedding pass
    apply_quality_filter: bool = True

    def fingerprint(self, embedding_identity: str | None) -> str:
        """Changes with anything that changes which personas are kept."""
        payload = json.dumps({**asdict(self), "embedding": embedding_identity, "version": 1}, sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


class EmbedderLike(Protocol):
    """What the hub needs of lib.embeddings.Embedder."""

    identity: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class ShardResult:
    hub: pl.DataFrame
    decisions: pl.DataFrame
    bands: pl.DataFrame
    embeddings: pl.DataFrame
    run: dict
    counts: dict[str, int] = field(default_factory=dict)


def load_candidates(store: DeltaStore, shard: str) -> pl.DataFrame:
    """The shard's candidate personas from text_personas and, when it exists, expanded_personas, in a stable order
    (the order keep-first follows): text personas first, then expansions by hop, then by text and persona id."""
    frames = []
    for rank, table in enumerate(CANDIDATE_SOURCES):
        if not store.exists(table):
            continue
        frame = store.scan(table, [shard]).collect()
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{store.table_uri(table)} lacks the columns {missing} persona_hub needs")
        frames.append(frame.with_columns(source=pl.lit("/".join(table)), source_rank=pl.lit(rank)))
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


def prefix_shards(store: DeltaStore, registry_frame: pl.DataFrame, shard: str) -> tuple[list[str], list[str]]:
    """(shards registered before `shard`, those of them already in the hub), both in registration order."""
    ordered = registry_frame.sort("registration_seq", "shard")["shard"].to_list()
    expected = ordered[: ordered.index(shard)] if shard in ordered else ordered
    present = set(store.partitions(HUB_TABLE))
    return expected, [s for s in expected if s in present]


def dedup_shard(
    store: DeltaStore,
    shard: str,
    candidates: pl.DataFrame,
    *,
    prefix: Sequence[str],
    settings: HubSettings,
    embedder: EmbedderLike | None,
    run_id: str,
) -> ShardResult:
    n = candidates.height
    texts = candidates["persona"].fill_null("").to_list()
    reason: list[str | None] = [None] * n
    duplicate_of: list[str | None] = [None] * n
    duplicate_shard: list[str | None] = [None] * n
    similarity = np.full(n, np.nan, dtype=np.float32)
    ids = candidates["persona_id"].to_list()

    # 1. quality
    if settings.apply_quality_filter:
        for i, r in enumerate(quality_filter(texts)):
            if r is not None:
                reason[i] = f"quality:{r}"
    alive = np.array([r is None for r in reason], dtype=bool)

    # 2. MinHash: earlier shards, then within the shard
    batch = minhash.tokenize_batch(texts, settings.ngram)
    sigs = minhash.signatures(batch, settings.num_perm, settings.seed)
    bands, rows = minhash.choose_bands(settings.minhash_threshold, settings.num_perm, settings.min_recall)
    keys = minhash.band_keys(sigs, bands, rows)
    for i, (prior_id, prior_shard, score) in _minhash_against_prefix(
        store, prefix, texts, keys, alive, settings
    ).items():
        reason[i], duplicate_of[i], duplicate_shard[i], similarity[i] = "minhash", prior_id, prior_shard, score
        alive[i] = False
    live = np.flatnonzero(alive)
    within = minhash.cluster_tokenized(
        batch.subset(live),
        threshold=settings.minhash_threshold,
        num_perm=settings.num_perm,
        seed=settings.seed,
        min_recall=settings.min_recall,
    )
    dropped_local = np.flatnonzero(within.representative != np.arange(len(live)))
    if len(dropped_local):
        sub = batch.subset(live)
        pairs = np.stack((within.representative[dropped_local], dropped_local), axis=1)
        scores = minhash.exact_jaccard(sub, sub, pairs)
        for local, rep, score in zip(dropped_local.tolist(), pairs[:, 0].tolist(), scores.tolist(), strict=True):
            i = int(live[local])
            reason[i], duplicate_of[i], duplicate_shard[i] = "minhash", ids[live[rep]], shard
            similarity[i] = score
            alive[i] = False

    # 3. embeddings: earlier shards' kept personas, then within the shard
    vectors = np.zeros((0, 0), dtype=np.float32)
    live = np.flatnonzero(alive)
    if settings.semantic_threshold is not None and embedder is not None and len(live):
        vectors = embedder.encode([texts[i] for i in live])
        prior_ids, prior_shards, prior_vectors = _prior_embeddings(store, prefix, embedder)
        result = semantic_keep_first(vectors, threshold=settings.semantic_threshold, prior=prior_vectors)
        for local in np.flatnonzero(~result.kept).tolist():
            i = int(live[local])
            if result.prior_match[local] >= 0:
                k = int(result.prior_match[local])
                duplicate_of[i], duplicate_shard[i] = prior_ids[k], prior_shards[k]
            else:
                duplicate_of[i], duplicate_shard[i] = ids[live[result.representative[local]]], shard
            reason[i], similarity[i] = "semantic", float(result.similarity[local])
            alive[i] = False
        vectors = vectors[result.kept]

    kept = np.flatnonzero(alive)
    fingerprint = settings.fingerprint(embedder.identity if embedder is not None else None)
    now = datetime.now(UTC)
    decisions = candidates.select(
        "persona_id", "shard", "source", "persona", *[c for c in ("text_id",) if c in candidates.columns]
    ).with_columns(
        position=pl.Series(np.arange(n), dtype=pl.Int64),
        decision=pl.Series(["kept" if a else "dropped" for a in alive], dtype=pl.String),
        reason=pl.Series(reason, dtype=pl.String),
        duplicate_of=pl.Series(duplicate_of, dtype=pl.String),
        duplicate_of_shard=pl.Series(duplicate_shard, dtype=pl.String),
        similarity=pl.Series(similarity, dtype=pl.Float32).fill_nan(None),
        hub_config=pl.lit(fingerprint),
        decided_at=pl.lit(now),
        run_id=pl.lit(run_id),
    )
    hub = (
        candidates.with_columns(position=pl.Series(np.arange(n), dtype=pl.Int64))
        .filter(pl.Series(alive))
        .with_columns(hub_config=pl.lit(fingerprint), run_id=pl.lit(run_id))
    )
    kept_ids = [ids[i] for i in kept]
    band_frame = pl.DataFrame(
        {
            "shard": [shard] * (len(kept) * bands),
            "persona_id": np.repeat(np.array(kept_ids, dtype=object), bands).tolist() if len(kept) else [],
            "band": np.tile(np.arange(bands, dtype=np.int16), len(kept)),
            "key": keys[kept].reshape(-1).view(np.int64) if len(kept) else np.zeros(0, dtype=np.int64),
        },
        schema={"shard": pl.String, "persona_id": pl.String, "band": pl.Int16, "key": pl.Int64},
    )
    embedding_frame = pl.DataFrame(
        {
            "shard": [shard] * len(vectors),
            "persona_id": kept_ids if len(vectors) else [],
            "model": [embedder.identity] * len(vectors) if len(vectors) else [],
            "vector": vectors.tolist() if len(vectors) else [],
        },
        schema={"shard": pl.String, "persona_id": pl.String, "model": pl.String, "vector": pl.List(pl.Float32)},
    )
    counts = {"candidates": n, "kept": len(kept)}
    for r in reason:
        if r is not None:
            counts[r] = counts.get(r, 0) + 1
    run = {
        "shard": shard,
        "deduplicated_at": now,
        "run_id": run_id,
        "prefix_present": list(prefix),
        "hub_config": fingerprint,
        "candidates": n,
        "kept": len(kept),
    }
    return ShardResult(hub, decisions, band_frame, embedding_frame, run, counts)


def _minhash_against_prefix(store, prefix, texts, keys, alive, settings) -> dict[int, tuple[str, str, float]]:
    """For each live candidate with a verified near-duplicate among earlier shards' kept personas: the earliest
    such persona (registration order, then hub position), its shard, and the exact Jaccard."""
    if not prefix or not store.exists(BANDS_TABLE) or not alive.any():
        return {}
    live = np.flatnonzero(alive)
    n_bands = keys.shape[1]
    probe = pl.DataFrame(
        {
            "candidate": np.repeat(live, n_bands),
            "band": np.tile(np.arange(n_bands, dtype=np.int16), len(live)),
            "key": keys[live].reshape(-1).view(np.int64),
        }
    )
    hits = (
        store.scan(BANDS_TABLE, list(prefix))
        .join(probe.lazy(), on=["band", "key"], how="inner")
        .select("candidate", "persona_id", "shard")
        .unique()
        .collect()
    )
    if hits.is_empty():
        return {}
    earlier = (
        store.scan(HUB_TABLE, list(prefix))
        .join(hits.select("persona_id").unique().lazy(), on="persona_id", how="semi")
        .select("persona_id", "persona", "shard", "position")
        .collect()
    )
    rank = {s: r for r, s in enumerate(prefix)}
    earlier = earlier.with_columns(order=pl.col("shard").replace_strict(rank, return_dtype=pl.Int64))
    row_of = {pid: r for r, pid in enumerate(earlier["persona_id"].to_list())}
    candidate_texts = [texts[i] for i in live]
    batch = minhash.tokenize_batch(candidate_texts + earlier["persona"].fill_null("").to_list(), settings.ngram)
    local_of = {int(c): k for k, c in enumerate(live.tolist())}
    pair_rows = [
        (local_of[c], len(live) + row_of[p])
        for c, p in zip(hits["candidate"], hits["persona_id"], strict=True)
        if p in row_of
    ]
    pairs = np.array(pair_rows, dtype=np.int64).reshape(-1, 2)
    jaccard = minhash.exact_jaccard(batch, batch, pairs)
    orders = earlier["order"].to_list()
    positions = earlier["position"].to_list()
    best: dict[int, tuple[tuple[int, int], str, str, float]] = {}
    for (local, other), score in zip(pairs.tolist(), jaccard.tolist(), strict=True):
        if score < settings.minhash_threshold:
            continue
        row = other - len(live)
        key = (orders[row], positions[row])
        candidate = int(live[local])
        if candidate not in best or key < best[candidate][0]:
            best[candidate] = (key, earlier["persona_id"][row], earlier["shard"][row], score)
    return {c: (pid, s, score) for c, (_, pid, s, score) in best.items()}


def _prior_embeddings(store, prefix, embedder) -> tuple[list[str], list[str], np.ndarray]:
    """Kept embeddings of the earlier shards, in registration order; vectors of another model are recomputed from
    the hub's texts (not stored: the next run of those shards replaces them)."""
    if not prefix or not store.exists(EMBEDDINGS_TABLE):
        return [], [], None
    stored = store.scan(EMBEDDINGS_TABLE, list(prefix)).collect()
    rank = {s: r for r, s in enumerate(prefix)}
    stored = stored.with_columns(order=pl.col("shard").replace_strict(rank, return_dtype=pl.Int64))
    current = stored.filter(pl.col("model") == embedder.identity)
    other = stored.filter(pl.col("model") != embedder.identity)
    if other.height:
        texts = (
            store.scan(HUB_TABLE, list(prefix))
            .join(other.select("persona_id").lazy(), on="persona_id", how="semi")
            .select("persona_id", "persona")
            .collect()
        )
        recomputed = embedder.encode(texts["persona"].to_list())
        current = pl.concat(
            [
                current,
                other.select("shard", "persona_id", "order")
                .join(
                    texts.with_columns(vector=pl.Series(recomputed.tolist(), dtype=pl.List(pl.Float32))),
                    on="persona_id",
                )
                .with_columns(model=pl.lit(embedder.identity))
                .select(current.columns),
            ]
        )
    current = current.sort("order")
    if current.is_empty():
        return [], [], None
    return (
        current["persona_id"].to_list(),
        current["shard"].to_list(),
        np.asarray(current["vector"].to_list(), dtype=np.float32),
    )

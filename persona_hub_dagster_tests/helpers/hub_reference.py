"""The hub's cross-shard lookups as they were before the persistent index (whole prior tables scanned, joined and
collected each shard): the reference the index must agree with, decision for decision."""

from __future__ import annotations

import numpy as np
import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup import minhash
from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first


class WholeTablePrior:
    def __init__(self, store, embedder):
        self.store, self.embedder = store, embedder

    def minhash_matches(self, prefix, texts, keys, sketches, settings):  # every band hit verified: no estimate
        n_bands = keys.shape[1]
        rows = np.arange(len(texts))
        probe = pl.DataFrame(
            {
                "candidate": np.repeat(rows, n_bands),
                "band": np.tile(np.arange(n_bands, dtype=np.int16), len(rows)),
                "key": keys.reshape(-1).view(np.int64),
            }
        )
        hits = (
            self.store.scan(tables.HUB_MINHASH_BANDS, list(prefix))
            .join(probe.lazy(), on=["band", "key"], how="inner")
            .select("candidate", "persona_id", "shard")
            .unique()
            .collect()
        )
        if hits.is_empty():
            return {}
        earlier = (
            self.store.scan(tables.PERSONA_HUB, list(prefix))
            .join(hits.select("persona_id").unique().lazy(), on="persona_id", how="semi")
            .select("persona_id", "persona", "shard", "position")
            .collect()
        )
        rank = {s: r for r, s in enumerate(prefix)}
        row_of = {pid: r for r, pid in enumerate(earlier["persona_id"].to_list())}
        batch = minhash.tokenize_batch(list(texts) + earlier["persona"].fill_null("").to_list(), settings.ngram)
        pairs = np.array(
            [(c, len(texts) + row_of[p]) for c, p in zip(hits["candidate"], hits["persona_id"], strict=True)],
            dtype=np.int64,
        ).reshape(-1, 2)
        jaccard = minhash.exact_jaccard(batch, batch, pairs)
        best = {}
        for (row, other), score in zip(pairs.tolist(), jaccard.tolist(), strict=True):
            if score < settings.minhash_threshold:
                continue
            e = other - len(texts)
            key = (rank[earlier["shard"][e]], earlier["position"][e])
            if row not in best or key < best[row][0]:
                best[row] = (key, earlier["persona_id"][e], earlier["shard"][e], score)
        return {row: (pid, shard, score) for row, (_, pid, shard, score) in best.items()}

    def semantic_matches(self, prefix, vectors, threshold):
        rank = {s: r for r, s in enumerate(prefix)}
        stored = (
            self.store.scan(tables.HUB_EMBEDDINGS, list(prefix))
            .filter(pl.col("model") == self.embedder.identity)
            .collect()
            .with_columns(order=pl.col("shard").replace_strict(rank, return_dtype=pl.Int64))
            .sort("order", maintain_order=True)
        )
        if stored.is_empty():
            return {}
        prior = np.asarray(stored["vector"].to_list(), dtype=np.float32)
        result = semantic_keep_first(vectors, threshold=threshold, prior=prior)
        return {
            int(i): (stored["persona_id"][int(k)], stored["shard"][int(k)], float(result.similarity[i]))
            for i, k in enumerate(result.prior_match.tolist())
            if k >= 0
        }

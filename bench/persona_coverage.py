"""The coverage map on a skewed hub: does a stratified draw spread where a uniform one follows the dense kinds, does a
query find its kind, and what do clustering 10^6 personas and assigning a new 10^5-persona shard cost.

    nice .venv/bin/python bench/persona_coverage.py --root /tmp/coverage --out /tmp/coverage/results.json

Hub: shards of planted personas (persona_hub_dagster_tests/helpers/planted_hub.py: two common kinds, software people
and retail workers, 10x as frequent as each of four rare ones: healthcare, crafts, farming and German lawyers; plus
Chinese and Thai personas), written straight into persona_hub and its embeddings table (no dedup: the generator's
texts are distinct), embedded with the fast model (model2vec distilled from MiniLM, `Embedder(fast=True)`; MiniLM
would take ~2 h for 1.1M personas here). Every step runs the project's own code (lib/coverage) in a fresh process,
peak RSS by getrusage:

1. build: 10 shards of 10^5 personas (10^6), then shard `new` (10^5 more).
2. cluster: persona_clusters for the last of the 10 shards with `recluster: true`: the whole hub clustered from its
   bounded sample (k = 256), then that shard assigned.
3. assign: persona_clusters for shard `new`: assigned to the existing clusters (no reclustering expected).
4. spread (on shard `s00`, assigned in a step of its own): per draw size, for uniform and stratified draws:
   planted-kind entropy (bits; six Latin kinds and two scripts: at most 3 bits), cluster entropy, the least-drawn kind,
   the mean pairwise cosine distance of the drawn personas' embeddings; and for queries aimed at a planted kind, the
   precision and recall of the selected personas against the planted labels at several min_similarity values.
5. regions: why stratified draws go across regions of clusters: the planted kinds' entropy of 1,000 drawn over
   k-means clusters alone and over regions of them (average or ward linkage; 4, 8, 16 regions).
6. queries-minilm: the same queries with MiniLM on 10^4 of those personas.
7. items: math problems from `--items` personas drawn each way on the configured model (the embedded 135M one by
   default): the items' planted kinds, cluster entropy, distinct-1/2 and mean pairwise embedding distance, as
   eval/report measures them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the planted hub's generator lives with the tests
SHARDS = [f"s{i:02d}" for i in range(10)]
PERSONAS = 100_000
QUERIES = {
    "healthcare": "healthcare workers: nurses, doctors and paramedics",
    "crafts": "people who build things with their hands",
    "farming": "farmers who grow crops and raise animals",
}


def peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def store_and_embedder(root: str):
    from persona_hub_dagster.lib.embeddings import Embedder
    from persona_hub_dagster.lib.storage import DeltaStore

    store = DeltaStore(root)
    return store, Embedder(fast=True, static_cache_root=root)


def build(root: str) -> dict:
    import polars as pl

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.embeddings import vector_column
    from persona_hub_dagster.lib.ids import content_id
    from persona_hub_dagster_tests.helpers.planted_hub import planted_personas

    store, embedder = store_and_embedder(root)
    started, kinds = time.perf_counter(), {}
    for seed, shard in enumerate([*SHARDS, "new"]):
        planted = planted_personas(PERSONAS, seed=seed, scripts=20)
        texts = [text for _, text in planted]
        ids = [content_id(f"{shard}\x1f{t}") for t in texts]
        kinds.update(zip(ids, (kind for kind, _ in planted), strict=True))
        hub = pl.DataFrame({"persona_id": ids, "persona": texts, "shard": shard, "source": "text_personas"})
        store.write_partitions(tables.PERSONA_HUB, hub, partitions=[shard])
        readable = [why is None for why in embedder.unreadable(texts)]
        vectors = embedder.encode([t for t, r in zip(texts, readable, strict=True) if r])
        embedded = [i for i, r in zip(ids, readable, strict=True) if r]
        frame = pl.DataFrame(
            {"shard": shard, "persona_id": embedded, "model": embedder.identity, "vector": vector_column(vectors)}
        )
        store.write_partitions(tables.HUB_EMBEDDINGS, frame, partitions=[shard])
    Path(root, "kinds.json").write_text(json.dumps(kinds))
    return {"step": "build", "seconds": round(time.perf_counter() - started, 1), "peak_rss_gb": peak_gb()}


def place(root: str, shard: str, recluster: bool) -> dict:
    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.coverage.persona_clusters import ClusterSettings, place_shard
    from persona_hub_dagster.lib.stage import Markdown  # noqa: F401 (metadata values)

    store, embedder = store_and_embedder(root)
    hub = store.scan(tables.PERSONA_HUB, [shard]).select("persona_id", "persona").collect()
    started = time.perf_counter()
    rows, metadata = place_shard(store, shard, hub, embedder, ClusterSettings(recluster=recluster), "bench")
    seconds = time.perf_counter() - started
    store.write_partitions(tables.PERSONA_CLUSTERS, rows, partitions=[shard])
    keep = ("clustering", "clusters", "strata", "reclustered", "outlier_share", "shard_clusters")
    return {
        "step": f"{'cluster' if recluster else 'assign'} {shard}",
        "hub_personas": sum(store.row_count(tables.PERSONA_HUB, [s]) for s in store.partitions(tables.PERSONA_HUB)),
        "seconds": round(seconds, 1),
        "peak_rss_gb": peak_gb(),
        **{k: metadata[k] for k in keep},
    }


def spread(root: str) -> dict:
    import numpy as np
    import polars as pl

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.coverage.persona_clusters import vectors_for
    from persona_hub_dagster.lib.coverage.selection import entropy
    from persona_hub_dagster.lib.synthesis.generate import draw_personas
    from persona_hub_dagster.lib.synthesis.steps import SynthesisSettings

    store, embedder = store_and_embedder(root)
    kinds = json.loads(Path(root, "kinds.json").read_text())
    hub = store.scan(tables.PERSONA_HUB, ["s00"]).collect()
    vectors, has_vector = vectors_for(store, "s00", hub, embedder)
    row_of = {pid: i for i, pid in enumerate(hub.filter(pl.Series(has_vector))["persona_id"].to_list())}
    planted = Counter(kinds[p] for p in hub["persona_id"])
    out = {"hub": hub.height, "planted": dict(planted.most_common()), "draws": [], "queries": []}
    for size in (100, 1000):
        for mode in ("uniform", "stratified"):
            drawn = draw_personas(hub, SynthesisSettings(personas=size, sampling=mode, seed=0), store, "s00")
            got = Counter(kinds[p] for p in drawn.personas["persona_id"])
            rows = [row_of[p] for p in drawn.personas["persona_id"] if p in row_of]
            chosen = vectors[rows]
            similarity = chosen @ chosen.T
            pairs = len(rows) * (len(rows) - 1)
            out["draws"].append(
                {
                    "size": size,
                    "mode": mode,
                    "kind_entropy_bits": round(entropy(list(got.values())), 3),
                    "kinds_drawn": len(got),
                    "least_drawn_kind": min(got.get(k, 0) for k in planted),
                    "per_kind": dict(got.most_common()),
                    "cluster_entropy_bits": drawn.composition()["cluster_entropy_bits"],
                    "clusters_drawn": drawn.composition()["clusters_drawn"],
                    "mean_pairwise_distance": round(float(1 - (similarity.sum() - len(rows)) / pairs), 4),
                }
            )
    for kind, query in QUERIES.items():
        q = embedder.encode([query])[0]
        similarity = np.full(hub.height, np.nan, dtype=np.float32)
        similarity[has_vector] = vectors @ q
        truth = np.array([kinds[p] == kind for p in hub["persona_id"]])
        for threshold in (0.2, 0.3, 0.4, 0.5):
            selected = np.nan_to_num(similarity, nan=-1) >= threshold
            hits = int((selected & truth).sum())
            out["queries"].append(
                {
                    "kind": kind,
                    "query": query,
                    "min_similarity": threshold,
                    "selected": int(selected.sum()),
                    "precision": round(hits / max(int(selected.sum()), 1), 3),
                    "recall": round(hits / int(truth.sum()), 3),
                }
            )
    out["peak_rss_gb"] = peak_gb()
    return {"step": "spread s00", **out}


def regions(root: str, size: int = 1000) -> dict:
    """Why the even draw goes across regions: on s00, stratified draws over k-means clusters alone (k = 16, 64, 256)
    and over regions of them (average or ward linkage, 4, 8 or 16 regions), each through selection.draw; the planted
    kinds' entropy of `size` drawn."""
    import faiss
    import numpy as np
    import polars as pl
    from scipy.cluster.hierarchy import fcluster, linkage

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.coverage.clustering import nearest_centroids
    from persona_hub_dagster.lib.coverage.persona_clusters import vectors_for
    from persona_hub_dagster.lib.coverage.selection import Aim, draw, entropy

    store, embedder = store_and_embedder(root)
    kinds = json.loads(Path(root, "kinds.json").read_text())
    hub = store.scan(tables.PERSONA_HUB, ["s00"]).select("persona_id", "persona").collect()
    vectors, has_vector = vectors_for(store, "s00", hub, embedder)
    hub = hub.filter(pl.Series(has_vector))
    rng = np.random.default_rng(0)

    def kind_entropy(cluster: np.ndarray, region: np.ndarray) -> float:
        frame = pl.DataFrame(
            {"persona_id": hub["persona_id"], "cluster": cluster, "cluster_label": "", "region": region},
            schema_overrides={"cluster": pl.Int32, "region": pl.Int32},
        )
        drawn = draw(hub, Aim(personas=size), frame).personas
        return round(entropy(list(Counter(kinds[p] for p in drawn["persona_id"]).values())), 3)

    uniform = draw(hub, Aim(personas=size, sampling="uniform"), None).personas
    out = {"uniform": round(entropy(list(Counter(kinds[p] for p in uniform["persona_id"]).values())), 3)}
    for k in (16, 64, 256):
        kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, spherical=True, seed=1, verbose=False)
        kmeans.train(vectors[rng.choice(len(vectors), min(len(vectors), k * 256), replace=False)])
        centroids = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
        cluster, _ = nearest_centroids(centroids, vectors)
        out[f"k={k} clusters alone"] = kind_entropy(cluster, cluster)
        for method in ("average", "ward"):
            tree = linkage(
                centroids.astype(np.float64), method, metric="cosine" if method == "average" else "euclidean"
            )
            for count in (4, 8, 16):
                if count < k:
                    region = fcluster(tree, count, "maxclust")[cluster]
                    out[f"k={k} {count} regions ({method})"] = kind_entropy(cluster, region)
    return {"step": "regions s00", "size": size, "kind_entropy_bits": out}


def queries_minilm(root: str, n: int = 10_000) -> dict:
    """The queries' precision and recall with MiniLM (the default model) on n of s00's personas: the default
    min_similarity of each model family (lib/embeddings.py QUERY_THRESHOLDS) comes from here and from `spread`."""
    import numpy as np

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.embeddings import Embedder

    store, _ = store_and_embedder(root)
    kinds = json.loads(Path(root, "kinds.json").read_text())
    hub = store.scan(tables.PERSONA_HUB, ["s00"]).head(n).collect()
    embedder = Embedder()
    readable = np.array([why is None for why in embedder.unreadable(hub["persona"].to_list())])
    hub = hub.filter(readable)
    started = time.perf_counter()
    vectors = embedder.encode(hub["persona"].to_list())
    seconds = time.perf_counter() - started
    out = []
    for kind, query in QUERIES.items():
        similarity = vectors @ embedder.encode([query])[0]
        truth = np.array([kinds[p] == kind for p in hub["persona_id"]])
        for threshold in (0.2, 0.25, 0.3, 0.35, 0.4):
            selected = similarity >= threshold
            hits = int((selected & truth).sum())
            out.append(
                {
                    "kind": kind,
                    "min_similarity": threshold,
                    "selected": int(selected.sum()),
                    "precision": round(hits / max(int(selected.sum()), 1), 3),
                    "recall": round(hits / int(truth.sum()), 3),
                }
            )
    return {"step": "queries-minilm s00", "personas": hub.height, "encode_seconds": round(seconds, 1), "queries": out}


def items(root: str, per_mode: int) -> dict:
    """Math problems from `per_mode` personas drawn each way, on the configured model (the embedded one by default):
    the spread of the items as eval/report measures it."""
    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.coverage.selection import entropy
    from persona_hub_dagster.lib.evaluation import diversity
    from persona_hub_dagster.lib.llm import LLMClient, LLMSettings, open_backend
    from persona_hub_dagster.lib.synthesis.generate import draw_personas, synthesize
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    store, embedder = store_and_embedder(root)
    kinds = json.loads(Path(root, "kinds.json").read_text())
    hub = store.scan(tables.PERSONA_HUB, ["s00"]).collect()
    out = []
    with open_backend(LLMSettings.from_env()) as backend:
        for mode in ("uniform", "stratified"):
            settings = TASKS["math"].settings(personas=per_mode, sampling=mode, max_tokens=160)
            drawn = draw_personas(hub, settings, store, "s00")
            started = time.perf_counter()
            output = synthesize(TASKS["math"], hub, LLMClient(backend), settings, shard="s00", run_id="b", drawn=drawn)
            texts = [row["problem"] for row in output.rows]
            vectors = embedder.encode(texts)
            similarity = vectors @ vectors.T
            pairs = len(texts) * (len(texts) - 1)
            clusters = Counter(row["persona_cluster"] for row in output.rows)
            out.append(
                {
                    "mode": mode,
                    "asked": drawn.personas.height,
                    "items": len(texts),
                    "seconds": round(time.perf_counter() - started, 1),
                    "item_kinds": dict(Counter(kinds[row["persona_id"]] for row in output.rows).most_common()),
                    "cluster_entropy_bits": round(entropy(list(clusters.values())), 3),
                    "distinct_1": diversity.distinct_n(texts, 1),
                    "distinct_2": diversity.distinct_n(texts, 2),
                    "mean_pairwise_distance": round(float(1 - (similarity.sum() - len(texts)) / max(pairs, 1)), 4),
                    "model": backend.model,
                }
            )
    return {"step": "items s00", "per_mode": per_mode, "results": out, "peak_rss_gb": peak_gb()}


def in_fresh_process(*argv: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    steps = ["build", "cluster", "assign", "spread-cluster", "spread", "regions", "queries-minilm", "items"]
    parser.add_argument("--step", choices=steps)
    parser.add_argument("--items", type=int, default=60, help="personas per sampling mode for the items step")
    args = parser.parse_args()
    if args.step:
        result = {
            "build": lambda: build(args.root),
            "cluster": lambda: place(args.root, SHARDS[-1], True),
            "assign": lambda: place(args.root, "new", False),
            "spread-cluster": lambda: place(args.root, "s00", False),
            "spread": lambda: spread(args.root),
            "regions": lambda: regions(args.root),
            "queries-minilm": lambda: queries_minilm(args.root),
            "items": lambda: items(args.root, args.items),
        }[args.step]()
        print(json.dumps(result, ensure_ascii=False))
        return
    results = []
    for step in steps:
        if step == "build" and Path(args.root, "kinds.json").exists():
            continue
        result = in_fresh_process("--root", args.root, "--out", args.out, "--step", step, "--items", str(args.items))
        print(json.dumps(result, ensure_ascii=False)[:2000], flush=True)
        results.append(result)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, 2 cores"}
    Path(args.out).write_text(json.dumps({"results": results, **meta}, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

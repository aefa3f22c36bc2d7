"""Dedup benchmark: our MinHash against exact Jaccard and against a per-record datasketch loop; MiniLM embedding
throughput; FAISS keep-first at scale.

    .venv/bin/python bench/dedup.py                       # 200k and 1M personas, baseline at 200k
    .venv/bin/python bench/dedup.py --sizes 20000 --baseline-limit 20000 --embed 2000 --ann 20000   # a quick run

MinHash (each pass in a fresh process, so peak RSS is the pass's own):
  - ours: `cluster_tokenized` (vectorized signatures, LSH 10x12, exact verification, keep-first);
  - baseline: what a per-record pipeline does with datasketch: for each persona, MinHash.update_batch, query a
    MinHashLSH(threshold=0.9) of the kept ones, keep it when nothing comes back (no verification);
  - truth: every pair with exact word-1-gram Jaccard >= 0.9, by a prefix-filter join (lib/dedup/exact.py).
  Recall = share of true pairs that do not survive with both members kept; precision = share of dropped personas
  whose representative is a true (J >= 0.9) duplicate of them.
Embeddings: MiniLM (the packaged model, batch 64) on persona texts, personas/s.
ANN: `semantic_keep_first` with IVF on --ann vectors: MiniLM embeddings of real (generated) personas, enlarged to
  the requested size with perturbed copies (cosine ~0.75-0.98 to their source) when --ann exceeds --embed;
  recall = share of a sample of kept vectors that truly have no earlier kept vector with cosine >= 0.9 (brute force).
"""

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the exact-join oracle lives with the tests
from persona_corpus import persona_corpus  # noqa: E402

THRESHOLD = 0.9


def _in_fresh_process(target, *args):
    # A worker killed by the OOM killer raises BrokenProcessPool here, instead of hanging like multiprocessing.Pool.
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(target, *args).result()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(n: int, clustering: str = "keep_first"):
    from persona_hub_dagster.lib.dedup.minhash import cluster_tokenized, tokenize_batch

    texts, _ = persona_corpus(n)
    base = _peak_mb()
    started = time.perf_counter()
    batch = tokenize_batch(texts)
    result = cluster_tokenized(batch, threshold=THRESHOLD, clustering=clustering)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mb": _peak_mb(),
        "delta_mb": _peak_mb() - base,
        "representative": result.representative,
        "bands": f"{result.bands}x{result.rows}",
        "candidates": result.candidates,
    }


def run_datasketch(n: int):
    from datasketch import MinHash, MinHashLSH

    from persona_hub_dagster.lib.dedup.minhash import tokenize

    texts, _ = persona_corpus(n)
    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    representative = np.arange(n)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([t.encode("utf-8") for t in tokenize(text)])
        found = lsh.query(m)
        if found:
            representative[i] = min(found)
        else:
            lsh.insert(i, m)
    return {
        "seconds": time.perf_counter() - started,
        "peak_mb": _peak_mb(),
        "representative": representative,
        "bands": f"{lsh.b}x{lsh.r}",
    }


def run_truth(n: int):
    from persona_hub_dagster.lib.dedup.minhash import tokenize_batch
    from persona_hub_dagster_tests.helpers.exact_jaccard import exact_similar_pairs

    texts, _ = persona_corpus(n)
    started = time.perf_counter()
    pairs = exact_similar_pairs(tokenize_batch(texts), THRESHOLD)
    return {"seconds": time.perf_counter() - started, "pairs": pairs}


def quality(n: int, representative: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from persona_hub_dagster.lib.dedup.minhash import exact_jaccard, tokenize_batch

    kept = representative == np.arange(n)
    recall = 1 - (kept[truth[:, 0]] & kept[truth[:, 1]]).mean() if len(truth) else 1.0
    dropped = np.flatnonzero(~kept)
    texts, _ = persona_corpus(n)
    batch = tokenize_batch(texts)
    jaccard = exact_jaccard(batch, batch, np.stack((representative[dropped], dropped), axis=1))
    return float(recall), float((jaccard >= THRESHOLD).mean()) if len(dropped) else 1.0


def embedding_rate(count: int) -> float:
    from persona_hub_dagster.lib.embeddings import Embedder

    texts, _ = persona_corpus(count, duplicate_share=0.0, seed=11)
    embedder = Embedder()
    embedder.encode(texts[:64])
    started = time.perf_counter()
    embedder.encode(texts)
    return count / (time.perf_counter() - started)


def ann_pass(embed: int, size: int, sample: int = 2000):
    from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first
    from persona_hub_dagster.lib.embeddings import Embedder

    texts, _ = persona_corpus(embed, seed=12)
    real = Embedder().encode(texts)
    rng = np.random.default_rng(0)
    vectors = real
    if size > embed:
        sources = rng.integers(0, embed, size - embed)
        noise = rng.normal(size=(len(sources), real.shape[1])).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        scale = rng.uniform(0.2, 0.9, size=(len(sources), 1)).astype(np.float32)
        copies = real[sources] + scale * noise
        copies /= np.linalg.norm(copies, axis=1, keepdims=True)
        vectors = np.concatenate((real, copies))
        vectors = vectors[rng.permutation(len(vectors))]
    started = time.perf_counter()
    result = semantic_keep_first(vectors, threshold=THRESHOLD)
    seconds = time.perf_counter() - started
    peak_mb = _peak_mb()  # of the dedup pass (and the embedding above), before the brute-force recall check
    kept = np.flatnonzero(result.kept)
    probe = np.sort(rng.choice(kept, min(sample, len(kept)), replace=False))
    # Brute force, chunked (a probe must have no earlier kept vector at cosine >= the threshold).
    violated = np.zeros(len(probe), dtype=bool)
    for start in range(0, len(vectors), 65_536):
        stop = min(start + 65_536, len(vectors))
        rows = np.arange(start, stop)
        sims = vectors[start:stop] @ vectors[probe].T
        earlier_kept = result.kept[start:stop, None] & (rows[:, None] < probe[None, :])
        violated |= ((sims >= THRESHOLD) & earlier_kept).any(axis=0)
    misses = int(violated.sum())
    return {
        "seconds": seconds,
        "peak_mb": peak_mb,
        "index": result.index,
        "kept": len(kept),
        "size": len(vectors),
        "kept_recall": 1 - misses / len(probe),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--baseline-limit", type=int, default=200_000)
    parser.add_argument("--embed", type=int, default=2000, help="personas for the MiniLM throughput pass")
    parser.add_argument("--ann", type=int, default=1_000_000, help="vectors for the FAISS pass (0: skip)")
    parser.add_argument("--ann-real", type=int, default=20_000, help="of which real MiniLM embeddings")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"## Dedup, {date.today()}, {platform.node()} ({platform.machine()}, Python {platform.python_version()})")
    print("| personas | pass | seconds | personas/s | peak RSS MB | LSH bands | recall | precision |")
    print("|---:|---|---:|---:|---:|---|---:|---:|")
    for n in sizes:
        truth = _in_fresh_process(run_truth, n)
        passes = [("ours (keep_first)", _in_fresh_process(run_ours, n))]
        if n <= 200_000:
            passes.append(("ours (connected_components)", _in_fresh_process(run_ours, n, "connected_components")))
        if n <= args.baseline_limit:
            passes.append(("datasketch per-record loop", _in_fresh_process(run_datasketch, n)))
        for name, result in passes:
            recall, precision = quality(n, result["representative"], truth["pairs"])
            print(
                f"| {n:,} | {name} | {result['seconds']:.1f} | {n / result['seconds']:,.0f} | "
                f"{result['peak_mb']:,.0f} | {result['bands']} | {recall:.4f} | {precision:.4f} |"
            )
        print(
            f"| {n:,} | exact Jaccard join (truth: {len(truth['pairs']):,} pairs) | {truth['seconds']:.1f} | | | | | |"
        )
        if len(passes) > 1 and "datasketch" in passes[-1][0]:
            ratio = passes[-1][1]["seconds"] / passes[0][1]["seconds"]
            print(f"\nours vs the datasketch loop at {n:,}: {ratio:.1f}x faster\n")
    if args.embed:
        rate = _in_fresh_process(embedding_rate, args.embed)
        print(f"MiniLM (sentence-transformers, CPU, batch 64): {rate:,.0f} personas/s on {args.embed:,} personas")
    if args.ann:
        ann = _in_fresh_process(ann_pass, args.ann_real, args.ann)
        print(
            f"FAISS keep-first at cosine {THRESHOLD}: {ann['size']:,} vectors ({args.ann_real:,} real MiniLM "
            f"embeddings + perturbed copies) in {ann['seconds']:.1f} s with {ann['index']}, "
            f"kept {ann['kept']:,}, recall on a sample of kept vectors {ann['kept_recall']:.4f}, "
            f"peak RSS {ann['peak_mb']:,.0f} MB"
        )


if __name__ == "__main__":
    main()

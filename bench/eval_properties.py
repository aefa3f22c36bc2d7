"""The non-LLM evaluation metrics at scale: diversity (distinct-1/2, MinHash and embedding near-duplicates, mean
pairwise distance), persona grounding (lift, the similarity curve) and contamination (13-grams, embedding
neighbours), on --items items against --bench benchmark records, ours vs a straightforward baseline, each pass in a
fresh process (its peak RSS is its own).

    .venv/bin/python bench/eval_properties.py                        # 10^5 items, 10^4 benchmark records
    .venv/bin/python bench/eval_properties.py --items 20000 --bench 2000

Data: persona-style texts (bench/persona_corpus.py, with planted near-duplicates) as items; another seed's texts as
the benchmark, 100 of which are planted verbatim among the items. Vectors: 384-d unit vectors with a shared
component (like sentence embeddings, unrelated texts at cosine ~0.3), near-duplicate texts at cosine >= 0.9, so that
the embedding measures have real work; embedding the texts themselves is the model's cost, measured in
bench/dedup.py (MiniLM ~190-440/s, model2vec ~32k/s) and left out here.

Baseline, what a first implementation does: distinct-n with Python sets of word tuples; near-duplicates with a
per-record datasketch MinHash LSH loop and a blocked all-pairs cosine matrix; mean pairwise distance from the full
pairwise matrix of the sample; grounding with a per-item loop; 13-grams with a Python set of word tuples of the
benchmark probed item by item; embedding neighbours with a blocked matrix product.
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
from persona_corpus import persona_corpus  # noqa: E402

DIM = 384
PLANTED = 100


def data(items: int, bench: int):
    texts, _ = persona_corpus(items, seed=21)
    benchmark, _ = persona_corpus(bench, duplicate_share=0.0, seed=99)
    rng = np.random.default_rng(0)
    planted = rng.choice(bench, PLANTED, replace=False)
    slots = rng.choice(items, PLANTED, replace=False)
    for slot, record in zip(slots, planted, strict=True):
        texts[slot] = benchmark[record]
    persona_ids = [f"p{i % (items // 2)}" for i in range(items)]  # two items per persona
    return texts, benchmark, persona_ids, slots, planted


def vectors(*groups: list[str], seed: int) -> list[np.ndarray]:
    """Unit vectors with a shared component, one per text of each group; equal texts (across the groups too) get
    nearly equal vectors, so a planted copy is its record's neighbour."""
    rng = np.random.default_rng(seed)
    common = np.full(DIM, 0.04, dtype=np.float32)
    by_text: dict[str, int] = {}
    rows = [np.array([by_text.setdefault(t, len(by_text)) for t in texts], dtype=np.int64) for texts in groups]
    base = rng.normal(size=(len(by_text), DIM)).astype(np.float32) / np.sqrt(DIM) + common
    out = []
    for row in rows:
        vec = base[row] + 0.01 * rng.normal(size=(len(row), DIM)).astype(np.float32) / np.sqrt(DIM)
        out.append(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    return out


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(timings: dict, name: str, function, *args):
    started = time.perf_counter()
    value = function(*args)
    timings[name] = time.perf_counter() - started
    return value


def ours(items: int, bench: int) -> dict:
    from persona_hub_dagster.lib.evaluation import contamination, diversity

    texts, benchmark, persona_ids, slots, planted = data(items, bench)
    item_vectors, bench_vectors = vectors(texts, benchmark, seed=1)
    (persona_vectors,) = vectors(persona_ids, seed=2)
    base = _peak_mb()
    t: dict[str, float] = {}
    _timed(t, "distinct-1/2", lambda: (diversity.distinct_n(texts, 1), diversity.distinct_n(texts, 2)))
    dups = _timed(t, "near-duplicates", diversity.near_duplicates, texts, item_vectors)
    _timed(t, "pairwise distance", diversity.mean_pairwise_distance, item_vectors)
    _timed(
        t,
        "grounding + curve",
        lambda: (
            diversity.grounding(item_vectors, persona_vectors, persona_ids).lift,
            diversity.similarity_curve(item_vectors, persona_vectors),
        ),
    )
    b = contamination.Benchmark("bench", benchmark)
    ngram = _timed(t, "contamination 13-grams", contamination.ngram_overlaps, texts, b)
    neighbours = _timed(
        t, "contamination embeddings", contamination.embedding_neighbours, item_vectors, bench_vectors, b
    )
    found = set(ngram["item_index"].to_list())
    return {
        "timings": t,
        "peak_mb": _peak_mb(),
        "data_mb": base,
        "minhash_rate": dups.minhash_rate,
        "embedding_rate": dups.embedding_rate,
        "planted_found": len(found & set(slots.tolist())),
        "embedding_found": len(set(neighbours["item_index"].to_list()) & set(slots.tolist())),
    }


def baseline(items: int, bench: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    texts, benchmark, persona_ids, slots, planted = data(items, bench)
    item_vectors, bench_vectors = vectors(texts, benchmark, seed=1)
    (persona_vectors,) = vectors(persona_ids, seed=2)
    base = _peak_mb()
    t: dict[str, float] = {}

    def distinct(n: int) -> float:
        grams, total = set(), 0
        for text in texts:
            words = text.lower().split()
            for i in range(len(words) - n + 1):
                grams.add(tuple(words[i : i + n]))
                total += 1
        return len(grams) / total

    _timed(t, "distinct-1/2", lambda: (distinct(1), distinct(2)))

    def near_duplicates() -> tuple[int, int]:
        lsh, minhash_dups = MinHashLSH(threshold=0.9, num_perm=128), 0
        for i, text in enumerate(texts):
            m = MinHash(num_perm=128)
            m.update_batch([w.encode() for w in set(text.lower().split())])
            if lsh.query(m):
                minhash_dups += 1
            else:
                lsh.insert(str(i), m)
        embedding_dups = 0
        for start in range(0, len(item_vectors), 4096):
            block = item_vectors[start : start + 4096] @ item_vectors[: start + 4096].T
            for row in range(block.shape[0]):
                if (block[row, : start + row] >= 0.9).any():
                    embedding_dups += 1
        return minhash_dups, embedding_dups

    _timed(t, "near-duplicates", near_duplicates)
    sample = item_vectors[np.random.default_rng(0).choice(len(item_vectors), 2000, replace=False)]
    _timed(t, "pairwise distance", lambda: 1 - (sample @ sample.T)[np.triu_indices(len(sample), 1)].mean())

    def grounding():
        n = len(item_vectors)
        own = [float(item_vectors[i] @ persona_vectors[i]) for i in range(n)]
        other = []
        for i in range(n):
            j = (i + 7) % n
            while persona_ids[j] == persona_ids[i]:
                j = (j + 1) % n
            other.append(float(item_vectors[i] @ persona_vectors[j]))
        rng, curve = np.random.default_rng(0), {}
        for _ in range(20_000):
            a, b = rng.integers(0, n, 2)
            key = round(float(persona_vectors[a] @ persona_vectors[b]), 1)
            curve.setdefault(key, []).append(float(item_vectors[a] @ item_vectors[b]))
        return np.mean(own) / np.mean(other), {k: np.mean(v) for k, v in curve.items()}

    _timed(t, "grounding + curve", grounding)

    def ngrams() -> set[int]:
        index = set()
        for record in benchmark:
            words = record.lower().split()
            index.update(tuple(words[i : i + 13]) for i in range(len(words) - 12))
        found = set()
        for i, text in enumerate(texts):
            words = text.lower().split()
            if any(tuple(words[j : j + 13]) in index for j in range(len(words) - 12)):
                found.add(i)
        return found

    found = _timed(t, "contamination 13-grams", ngrams)

    def neighbours() -> int:
        flagged = 0
        for start in range(0, len(item_vectors), 8192):
            best = (item_vectors[start : start + 8192] @ bench_vectors.T).max(axis=1)
            flagged += int((best >= 0.9).sum())
        return flagged

    _timed(t, "contamination embeddings", neighbours)
    return {
        "timings": t,
        "peak_mb": _peak_mb(),
        "data_mb": base,
        "planted_found": len(found & set(slots.tolist())),
    }


def _in_fresh_process(target, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(target, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--bench", type=int, default=10_000)
    args = parser.parse_args()
    print(
        f"## Evaluation set metrics, {date.today()}, {platform.node()} ({platform.machine()}, "
        f"Python {platform.python_version()}): {args.items:,} items, {args.bench:,} benchmark records"
    )
    ours_result = _in_fresh_process(ours, args.items, args.bench)
    base_result = _in_fresh_process(baseline, args.items, args.bench)
    print("| metric | ours s | baseline s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, seconds in ours_result["timings"].items():
        other = base_result["timings"][name]
        print(f"| {name} | {seconds:.2f} | {other:.2f} | {other / seconds:.1f}× |")
    total, base_total = sum(ours_result["timings"].values()), sum(base_result["timings"].values())
    print(f"| **all** | **{total:.1f}** | **{base_total:.1f}** | **{base_total / total:.1f}×** |")
    print(
        f"\nPeak RSS: ours {ours_result['peak_mb']:,.0f} MB, baseline {base_result['peak_mb']:,.0f} MB (the data "
        f"and vectors alone: {ours_result['data_mb']:,.0f} MB). Planted benchmark copies found by 13-grams: ours "
        f"{ours_result['planted_found']}/{PLANTED}, baseline {base_result['planted_found']}/{PLANTED}; by embedding "
        f"neighbours (ours) {ours_result['embedding_found']}/{PLANTED}. Near-duplicate share: MinHash "
        f"{ours_result['minhash_rate']:.3f}, embeddings {ours_result['embedding_rate']:.3f}."
    )


if __name__ == "__main__":
    main()

"""What the Delta response cache costs at 10^5 entries: writing, opening a namespace, looking keys up.

Fills one namespace with --entries completions (~300 characters each) in commits of --batch entries, plus a second
namespace of the same size that lookups must not read, then measures in one process:
  - put: one commit per batch (what each LLM batch pays),
  - open: the first lookup of a run, which loads the namespace (pruned to its partition),
  - lookup: a batch of keys against the loaded namespace (half hits, half misses),
  - baseline: the same batch looked up by scanning the table with a filter on the keys (no in-memory index).

    .venv/bin/python bench/llm_cache.py --entries 100000
"""

import argparse
import platform
import random
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

from persona_hub_dagster.lib.llm.cache import ResponseCache
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import LLM_RESPONSES


def fill(store: DeltaStore, namespace: str, entries: int, batch: int) -> tuple[list[str], float]:
    cache = ResponseCache(store, namespace)
    keys = [f"{namespace}-{i:08d}-{random.getrandbits(64):016x}" for i in range(entries)]
    text = "A retired marine engineer who restores wooden sailboats and writes a small newsletter about it. " * 3
    seconds = []
    for start in range(0, entries, batch):
        chunk = {k: Completion(text, "stop", 120, 60, 0.5) for k in keys[start : start + batch]}
        began = time.perf_counter()
        cache.put(chunk, backend="bench", model="m")
        seconds.append(time.perf_counter() - began)
    return keys, sorted(seconds)[len(seconds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = DeltaStore(root=str(Path(tmp) / "delta"))
        keys, put_median = fill(store, "stage.shard-a", args.entries, args.batch)
        fill(store, "stage.shard-b", args.entries, args.batch)
        probe = random.sample(keys, args.batch // 2) + [f"missing-{i}" for i in range(args.batch // 2)]

        cache = ResponseCache(store, "stage.shard-a")
        began = time.perf_counter()
        cache.lookup(probe[:1])
        open_s = time.perf_counter() - began
        began = time.perf_counter()
        hits = cache.lookup(probe)
        lookup_s = time.perf_counter() - began
        assert len(hits) == args.batch // 2

        began = time.perf_counter()
        scanned = (
            pl.scan_delta(store.delta_table(LLM_RESPONSES))
            .filter((pl.col("namespace") == "stage.shard-a") & pl.col("key").is_in(probe))
            .collect()
        )
        scan_s = time.perf_counter() - began
        assert scanned.height == args.batch // 2
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"## LLM response cache, {date.today()}, {platform.node()} ({platform.machine()})")
    print(f"{args.entries} entries per namespace x 2 namespaces, commits of {args.batch}, local disk")
    print("| operation | time |")
    print("|---|---:|")
    print(f"| put one batch of {args.batch} (one commit, median) | {put_median * 1000:.0f} ms |")
    print(f"| open a namespace of {args.entries} (first lookup of a run) | {open_s * 1000:.0f} ms |")
    print(f"| look up {args.batch} keys in the opened namespace | {lookup_s * 1000:.2f} ms |")
    print(f"| baseline: look up the same {args.batch} keys by a filtered table scan | {scan_s * 1000:.0f} ms |")
    print(
        f"per-batch lookup: {scan_s / lookup_s:.0f}x faster than scanning; the open is paid once per run; "
        f"peak RSS {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()

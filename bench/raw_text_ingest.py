"""How much raw_text's per-record accounting costs: our ingest vs a bare read-and-write, in one process.

Builds a JSONL shard of N texts from the WikiText-2 paragraphs in ../shared (each copy varied so there are no
accidental duplicates; a planted 2% of exact duplicates and 1% of broken lines), then times
  (a) baseline: polars.read_ndjson + the same DeltaStore write (no cleaning, no dedup, no rejects; it cannot
      survive a single bad line, so it reads a copy without them), and
  (b) ShardIngest -> DeltaStore.write_partitions (cleaning, exact dedup, every reject kept),
and reports texts/s for each, their ratio, and peak RSS. Falls back to synthetic paragraphs if ../shared is absent.

    .venv/bin/python bench/raw_text_ingest.py --texts 200000
"""

import argparse
import json
import platform
import random
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

from persona_hub_dagster.lib.corpus.ingest import RAW_TEXT_SCHEMA, ShardIngest
from persona_hub_dagster.lib.corpus.readers import SourceSpec
from persona_hub_dagster.lib.storage import DeltaStore

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2_test_paragraphs.jsonl"


def paragraphs() -> list[str]:
    if WIKITEXT.exists():
        return [json.loads(line)["text"] for line in WIKITEXT.read_text().splitlines()]
    words = "persona hub synthetic data shard ingestion delta table lineage partition".split()
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=120)) for _ in range(2000)]


def build_shard(folder: Path, n: int) -> tuple[Path, Path]:
    rng = random.Random(1)
    base = paragraphs()
    dirty, clean = folder / "shard.jsonl", folder / "shard_clean.jsonl"
    kept: list[str] = []
    with dirty.open("w") as out_dirty, clean.open("w") as out_clean:
        for i in range(n):
            roll = rng.random()
            if roll < 0.01:
                out_dirty.write('{"text": "broken line\n')
                continue
            if roll < 0.03 and kept:
                text = rng.choice(kept)
            else:
                text = f"[{i}] " + base[i % len(base)]
                kept.append(text) if len(kept) < 10_000 else None
            line = json.dumps({"text": text, "url": f"https://example.com/{i}"}) + "\n"
            out_dirty.write(line)
            out_clean.write(line)
    return dirty, clean


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=200_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dirty, clean = build_shard(folder, args.texts)
        size_mb = dirty.stat().st_size / 2**20
        store = DeltaStore(root=str(folder / "delta"))

        def baseline():
            frame = pl.read_ndjson(clean).with_columns(shard=pl.lit("bench"))
            return store.write_partitions("baseline", frame, partitions=["bench"]).rows_written

        def ours():
            ingest = ShardIngest(SourceSpec(str(dirty), "jsonl"), shard="bench", run_id="bench")
            write = store.write_partitions("raw_text", ingest.accepted(), partitions=["bench"], schema=RAW_TEXT_SCHEMA)
            store.write_partitions("raw_text_rejects", ingest.rejects(), partitions=["bench"])
            return write.rows_written, ingest.report

        baseline_rows, baseline_s = timed(baseline)
        (our_rows, report), our_s = timed(ours)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"## raw_text ingest, {date.today()}, {platform.node()} ({platform.machine()}, {platform.python_version()})")
    print(f"shard: {args.texts} lines, {size_mb:.0f} MB JSONL (WikiText-2 paragraphs: {WIKITEXT.exists()})")
    baseline_rate, our_rate = baseline_rows / baseline_s, report.records / our_s
    print(f"baseline read_ndjson + Delta write: {baseline_rows} rows, {baseline_s:.2f} s, {baseline_rate:,.0f}/s")
    print(f"ShardIngest + Delta write (clean, dedup, rejects): {our_rows} rows, {our_s:.2f} s, {our_rate:,.0f}/s")
    print(f"ratio (ours / baseline, records per second): {our_rate / baseline_rate:.2f}")
    print(f"rejected: {dict(report.rejected)}; peak RSS of the process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()

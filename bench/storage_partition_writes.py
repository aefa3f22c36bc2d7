"""Does writing (and reading) one shard get slower as a table collects shards and commits?

Writes --shards shards of --rows rows each to one table, one commit per shard as the assets do, then rewrites a few
shards, and reports the latency of a one-shard write, a one-shard read, and a row count at several table sizes.
Also reports whether delta-rs wrote checkpoints (without them every open replays the whole log).

    .venv/bin/python bench/storage_partition_writes.py --shards 1000
"""

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import polars as pl

from persona_hub_dagster.lib.storage import DeltaStore


def shard_frame(shard: str, rows: int) -> pl.DataFrame:
    return pl.DataFrame({"shard": [shard] * rows, "i": range(rows), "text": [f"{shard} row {i}" for i in range(rows)]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    marks = sorted({10, 100, 500, args.shards} & set(range(1, args.shards + 1)))

    print(f"## storage partition writes, {date.today()}, {platform.node()} ({platform.machine()})")
    print(f"{args.shards} shards x {args.rows} rows, one commit per shard, local disk")
    print("| shards in table | write one shard (ms, median of 10) | read one shard (ms) | row count (ms) |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        store = DeltaStore(root=str(Path(tmp) / "delta"))
        written = 0
        for mark in marks:
            while written < mark - 10:
                store.write_partitions("t", shard_frame(f"s{written:06d}", args.rows), partitions=[f"s{written:06d}"])
                written += 1
            write_ms = []
            while written < mark:  # the last ten writes up to the mark are timed
                start = time.perf_counter()
                store.write_partitions("t", shard_frame(f"s{written:06d}", args.rows), partitions=[f"s{written:06d}"])
                write_ms.append((time.perf_counter() - start) * 1000)
                written += 1
            start = time.perf_counter()
            store.read("t", [f"s{mark // 2:06d}"])
            read_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            store.row_count("t")
            count_ms = (time.perf_counter() - start) * 1000
            print(f"| {mark} | {statistics.median(write_ms):.0f} | {read_ms:.0f} | {count_ms:.0f} |")
        log = Path(tmp) / "delta" / "t" / "_delta_log"
        checkpoints = sorted(p.name for p in log.glob("*.checkpoint.parquet"))
        print(f"commits: {len(list(log.glob('*.json')))}, checkpoints: {len(checkpoints)} {checkpoints[-2:]}")


if __name__ == "__main__":
    main()

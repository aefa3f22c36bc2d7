"""A separate process that writes one shard several times, for the concurrent-writer tests.

Usage: python concurrent_writer.py ROOT SHARD START_AT ROUNDS
Waits until START_AT (epoch seconds) so that all writers race, including to create the table. From round 2 on,
each writer adds a column of its own, so concurrent schema changes are part of the race. Prints the number of
commit attempts of each round.
"""

import sys
import time

import polars as pl

from persona_hub_dagster.lib.storage import DeltaStore


def main() -> None:
    root, shard, start_at, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    store = DeltaStore(root=root)
    while time.time() < start_at:
        time.sleep(0.001)
    attempts = []
    for round_number in range(rounds):
        rows = 100 + round_number
        frame = pl.DataFrame({"shard": [shard] * rows, "round": [round_number] * rows, "i": list(range(rows))})
        if round_number >= 2:
            frame = frame.with_columns(pl.lit(round_number).alias(f"extra_{shard}"))
        attempts.append(store.write_partitions("table", frame, partitions=[shard]).attempts)
    print(" ".join(map(str, attempts)))


if __name__ == "__main__":
    main()

"""Stream ROWS rows (~1 KB each) through DeltaStore.write_partitions in a fresh process; print the peak-RSS growth
in MB and the bytes of text written. Used by the bounded-memory test.

Usage: python stream_write_peak.py ROOT ROWS
"""

import resource
import sys

import pyarrow as pa

from persona_hub_dagster.lib.storage import DeltaStore

BATCH_ROWS = 5_000


def main() -> None:
    root, rows = sys.argv[1], int(sys.argv[2])
    texts = pa.array([f"{i} " + "persona hub synthetic data " * 37 for i in range(BATCH_ROWS)])
    batch = pa.record_batch([pa.array(["s"] * BATCH_ROWS), texts], names=["shard", "text"])

    def batches():
        for _ in range(rows // BATCH_ROWS):
            yield batch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    DeltaStore(root=root).write_partitions("t", batches(), partitions=["s"])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{grown_mb:.1f} {texts.nbytes * (rows // BATCH_ROWS)}")


if __name__ == "__main__":
    main()

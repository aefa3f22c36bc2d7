"""The Delta storage semantics of lib.storage, each scenario against a local folder and against S3 (moto)."""

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from persona_hub_dagster.lib.storage import (
    DeltaStore,
    TableNotFound,
    partition_predicate,
)
from persona_hub_dagster.lib.table_data import PartitionMismatch

HELPERS = Path(__file__).parent / "helpers"


def frame(shard: str, values: list[int], **extra) -> pl.DataFrame:
    return pl.DataFrame(
        {"shard": [shard] * len(values), "value": values, **extra},
        schema_overrides={"shard": pl.String, "value": pl.Int64},
    )


def by_shard(store: DeltaStore, table: str) -> dict[str, list[int]]:
    rows = store.read(table).sort("shard", "value")
    return {s: g["value"].to_list() for (s,), g in rows.group_by("shard", maintain_order=True)}


def test_table_uri_follows_the_asset_key_path(store):
    assert store.table_uri("raw_text") == f"{store.root}/raw_text"
    assert store.table_uri(["synthetic", "math"]) == f"{store.root}/synthetic/math"
    assert store.table_uri("synthetic/math") == f"{store.root}/synthetic/math"
    with pytest.raises(ValueError):
        store.table_uri("../escape")


def test_rematerializing_a_shard_replaces_exactly_that_shard(store):
    store.write_partitions("t", frame("a", [1, 2, 3]), partitions=["a"])
    store.write_partitions("t", frame("b", [10, 20]), partitions=["b"])
    store.write_partitions("t", frame("c", [100]), partitions=["c"])

    write = store.write_partitions("t", frame("b", [30, 40, 50]), partitions=["b"])

    assert by_shard(store, "t") == {"a": [1, 2, 3], "b": [30, 40, 50], "c": [100]}
    assert write.rows_written == 3 and write.table_rows == 7
    # The overwrite was one commit carrying our predicate, not a delete followed by an append.
    last = DeltaTable(store.table_uri("t"), storage_options=None).history(1)[0]
    assert last["operationParameters"]["predicate"] == "shard = 'b'"
    assert write.version == last["version"]


def test_an_empty_partition_write_empties_the_shard_and_creates_missing_tables(store):
    store.write_partitions("t", frame("a", [1, 2]), partitions=["a"])
    store.write_partitions("t", frame("b", [3]), partitions=["b"])
    empty = frame("a", [])
    write = store.write_partitions("t", empty, partitions=["a"])
    assert by_shard(store, "t") == {"b": [3]}
    assert write.rows_written == 0

    # Creating a table from an empty first write still passes the predicate and keeps the schema.
    store.write_partitions("fresh", empty, partitions=["a"])
    assert store.exists("fresh")
    assert store.read("fresh").schema == {"shard": pl.String, "value": pl.Int64}


def test_rows_outside_the_partition_are_an_error_and_nothing_is_written(store):
    store.write_partitions("t", frame("a", [1]), partitions=["a"])
    mixed = pl.concat([frame("a", [2]), frame("b", [3])])
    with pytest.raises(PartitionMismatch, match="outside the partitions"):
        store.write_partitions("t", mixed, partitions=["a"])
    with pytest.raises(PartitionMismatch, match="no 'shard' column"):
        store.write_partitions("t", pl.DataFrame({"value": [1]}), partitions=["a"])
    with pytest.raises(PartitionMismatch):
        store.write_partitions("t", pl.DataFrame({"shard": [None], "value": [1]}), partitions=["a"])
    assert by_shard(store, "t") == {"a": [1]}
    assert DeltaTable(store.table_uri("t")).version() == 0


def test_several_partitions_in_one_commit(store):
    store.write_partitions("t", frame("a", [1]), partitions=["a"])
    both = pl.concat([frame("b", [2]), frame("c", [3, 4])])
    store.write_partitions("t", both, partitions=["b", "c"])
    assert by_shard(store, "t") == {"a": [1], "b": [2], "c": [3, 4]}
    # A partition named in the write but absent from the data ends up empty: the write says what the range holds.
    store.write_partitions("t", frame("b", [5]), partitions=["b", "c"])
    assert by_shard(store, "t") == {"a": [1], "b": [5]}


def test_loading_one_several_or_all_shards(store):
    for shard, values in {"a": [1], "b": [2, 3], "c": [4, 5, 6]}.items():
        store.write_partitions("t", frame(shard, values), partitions=[shard])
    assert store.scan("t", ["b"]).collect()["value"].sort().to_list() == [2, 3]
    assert store.scan("t", ["a", "c"]).collect()["value"].sort().to_list() == [1, 4, 5, 6]
    assert store.scan("t").collect().height == 6
    assert store.scan("t", []).collect().height == 0
    assert store.partitions("t") == ["a", "b", "c"]
    assert store.row_count("t") == 6 and store.row_count("t", ["c"]) == 3


def test_a_one_shard_read_opens_only_that_shards_files(store):
    for shard in ["a", "b", "c"]:
        store.write_partitions("t", frame(shard, [1, 2]), partitions=[shard])
    plan = store.scan("t", ["b"]).explain()
    assert "shard=b" in plan and "shard=a" not in plan and "shard=c" not in plan


def test_adding_a_column_later_keeps_older_rows_readable(store):
    store.write_partitions("t", frame("a", [1, 2]), partitions=["a"])
    store.write_partitions("t", frame("b", [3], model=["m1"]), partitions=["b"])
    rows = store.read("t").sort("value")
    assert rows.columns.count("model") == 1
    assert rows["model"].to_list() == [None, None, "m1"]
    # Rewriting an old shard without the new column keeps the column for the others.
    store.write_partitions("t", frame("a", [7]), partitions=["a"])
    assert store.read("t").sort("value")["model"].to_list() == ["m1", None]


def test_an_incompatible_type_change_fails_without_damage(store):
    store.write_partitions("t", frame("a", [1]), partitions=["a"])
    with pytest.raises(DeltaError, match="Cannot cast string"):
        store.write_partitions("t", pl.DataFrame({"shard": ["b"], "value": ["not a number"]}), partitions=["b"])
    assert by_shard(store, "t") == {"a": [1]}


def test_streamed_batches_are_validated_and_written_in_one_commit(store):
    def batches():
        for i in range(5):
            yield frame("s", list(range(i * 10, i * 10 + 10)))

    write = store.write_partitions("t", batches(), partitions=["s"])
    assert write.rows_written == 50 and write.preview.height == 5
    assert store.read("t")["value"].sort().to_list() == list(range(50))
    assert DeltaTable(store.table_uri("t")).version() == 0

    def bad_batches():
        yield frame("s", [1])
        yield frame("other", [2])

    with pytest.raises(PartitionMismatch):
        store.write_partitions("t", bad_batches(), partitions=["s"])
    assert store.row_count("t") == 50

    with pytest.raises(ValueError, match="explicit `schema`"):
        store.write_partitions("t2", iter([]), partitions=["s"])
    schema = pa.schema([("shard", pa.string()), ("value", pa.int64())])
    store.write_partitions("t2", iter([]), partitions=["s"], schema=schema)
    assert store.read("t2").height == 0


def test_whole_table_replace_for_unpartitioned_assets(store):
    store.write_partitions("summary", pl.DataFrame({"k": ["x"], "old": [1]}), partitions=None)
    write = store.write_partitions("summary", pl.DataFrame({"k": ["y", "z"]}), partitions=None)
    assert store.read("summary").to_dict(as_series=False) == {"k": ["y", "z"]}
    assert write.partitions is None and write.table_rows == 2


def test_commit_metadata_names_the_writer(store):
    write = store.write_partitions("t", frame("a", [1]), partitions=["a"], commit_metadata={"dagster.run_id": "r-1"})
    commit = DeltaTable(store.table_uri("t")).history(1)[0]
    assert commit["dagster.run_id"] == "r-1"
    assert commit["persona_hub.write_id"] == write.commit_metadata["persona_hub.write_id"]


def test_reading_a_missing_table_says_so(store):
    with pytest.raises(TableNotFound, match="not been materialized"):
        store.scan("nothing_here")
    assert store.partitions("nothing_here") == []


def test_partition_predicate_escapes_quotes():
    assert partition_predicate(["a"]) == "shard = 'a'"
    assert partition_predicate(["a", "o'b"]) == "shard IN ('a', 'o''b')"


@pytest.mark.timeout(300)
def test_concurrent_writers_of_different_shards_lose_nothing(store, storage_root):
    """Four processes race to create the table, then keep rewriting their own shard, some changing the schema."""
    shards, rounds = ["w0", "w1", "w2", "w3"], 4
    start_at = time.time() + 3  # all interpreters are up and waiting when the race starts
    writers = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "concurrent_writer.py"), storage_root, shard, str(start_at), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in shards
    ]
    outputs = [w.communicate(timeout=240) for w in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    attempts = [list(map(int, out.split())) for out, _ in outputs]
    print("commit attempts per writer and round:", attempts)

    rows = store.read("table")
    final = rows.filter(pl.col("round") == rounds - 1)
    assert rows.height == final.height == len(shards) * (100 + rounds - 1)
    for shard in shards:
        mine = rows.filter(pl.col("shard") == shard)
        assert sorted(mine["i"].to_list()) == list(range(100 + rounds - 1))
        assert set(mine[f"extra_{shard}"].to_list()) == {rounds - 1}
    assert set(store.partitions("table")) == set(shards)


def test_streamed_writes_keep_memory_flat_as_the_shard_grows(tmp_path):
    """Peak memory of a streamed write, in fresh processes, for 40 MB and 200 MB of text: five times the data may
    not cost anywhere near five times the memory (delta-rs' defaults cost ~3x the data; see WRITER_PROPERTIES)."""
    peaks = {}
    for rows in (40_000, 200_000):
        out = subprocess.run(
            [sys.executable, str(HELPERS / "stream_write_peak.py"), str(tmp_path / f"t{rows}"), str(rows)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peaks[rows] = (float(out[0]), int(out[1]) / 2**20)
    (small_mb, small_data), (big_mb, big_data) = peaks[40_000], peaks[200_000]
    print(f"peak growth: {small_mb:.0f} MB for {small_data:.0f} MB of text, {big_mb:.0f} MB for {big_data:.0f} MB")
    assert big_mb - small_mb < 0.5 * (big_data - small_data)

"""DeltaIOManager inside real Dagster runs: partition writes, downstream loads of one / several / all shards,
single-run ranges, and the materialization metadata the UI shows. Local and S3."""

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource, markdown_preview
from persona_hub_dagster.lib.storage import DeltaStore

SHARDS = ["a", "b", "c"]


@dg.asset(partitions_def=text_shards)
def numbers(context: dg.AssetExecutionContext) -> pl.DataFrame:
    shard = context.partition_key
    size = {"a": 1, "b": 2, "c": 3}[shard]
    return pl.DataFrame({"shard": [shard] * size, "n": list(range(size)), "note": [f"row of {shard}"] * size})


@dg.asset(partitions_def=text_shards)
def doubled(numbers: pl.LazyFrame) -> pl.DataFrame:
    return numbers.with_columns(n=pl.col("n") * 2).collect()


@dg.asset
def numbers_summary(numbers: pl.DataFrame) -> pl.DataFrame:
    return numbers.group_by("shard").agg(rows=pl.len()).sort("shard")


@dg.asset(
    partitions_def=text_shards,
    ins={"numbers": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping(["a", "c"]))},
)
def against_a_and_c(context: dg.AssetExecutionContext, numbers: pl.DataFrame) -> pl.DataFrame:
    return pl.DataFrame({"shard": [context.partition_key], "seen": [",".join(sorted(numbers["shard"].unique()))]})


@dg.asset(partitions_def=text_shards, backfill_policy=dg.BackfillPolicy.single_run())
def ranged(context: dg.AssetExecutionContext, numbers: pl.DataFrame) -> pl.DataFrame:
    """Like the hub: one run over a range of shards, loading and writing them all at once."""
    return numbers.with_columns(run_shards=pl.lit(",".join(context.partition_keys)))


ASSETS = [numbers, doubled, numbers_summary, against_a_and_c, ranged]


@pytest.fixture
def resources(storage_root):
    storage = DeltaStorageResource(root=storage_root)
    return {"storage": storage, "io_manager": DeltaIOManager(storage=storage)}


@pytest.fixture
def shards_instance(instance):
    instance.add_dynamic_partitions(text_shards.name, SHARDS)
    return instance


def materialize(selection, resources, instance, **kwargs) -> dg.ExecuteInProcessResult:
    result = dg.materialize(ASSETS, selection=selection, resources=resources, instance=instance, **kwargs)
    assert result.success
    return result


def test_downstream_loads_one_several_or_all_shards(resources, shards_instance, storage_root):
    for shard in SHARDS:
        materialize([numbers], resources, shards_instance, partition_key=shard)
    store = DeltaStore(root=storage_root)

    materialize([doubled], resources, shards_instance, partition_key="b")  # identity: one shard
    assert store.read("doubled").sort("n")["n"].to_list() == [0, 2]

    materialize([against_a_and_c], resources, shards_instance, partition_key="b")  # several shards
    assert store.read("against_a_and_c").row(0, named=True) == {"shard": "b", "seen": "a,c"}

    materialize([numbers_summary], resources, shards_instance)  # unpartitioned: all shards
    assert store.read("numbers_summary").to_dicts() == [
        {"shard": "a", "rows": 1},
        {"shard": "b", "rows": 2},
        {"shard": "c", "rows": 3},
    ]


def test_a_single_run_range_writes_each_shard_once_in_one_commit(resources, shards_instance, storage_root):
    for shard in SHARDS:
        materialize([numbers], resources, shards_instance, partition_key=shard)
    tags = {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "c"}
    materialize([ranged], resources, shards_instance, tags=tags)
    rows = DeltaStore(root=storage_root).read("ranged")
    assert rows.height == 6 and set(rows["run_shards"]) == {"a,b,c"}

    # Re-running part of the range replaces exactly those shards.
    tags = {"dagster/asset_partition_range_start": "b", "dagster/asset_partition_range_end": "c"}
    materialize([ranged], resources, shards_instance, tags=tags)
    rows = DeltaStore(root=storage_root).read("ranged")
    assert rows.group_by("shard").agg(pl.col("run_shards").first()).sort("shard").to_dicts() == [
        {"shard": "a", "run_shards": "a,b,c"},
        {"shard": "b", "run_shards": "b,c"},
        {"shard": "c", "run_shards": "b,c"},
    ]


def test_materializations_report_counts_schema_location_and_preview(resources, shards_instance, storage_root):
    materialize([numbers], resources, shards_instance, partition_key="a")
    result = materialize([numbers], resources, shards_instance, partition_key="c")
    metadata = result.asset_materializations_for_node("numbers")[0].metadata

    assert metadata["dagster/partition_row_count"].value == 3
    assert metadata["dagster/row_count"].value == 4  # the whole table: shards a and c
    columns = {c.name: c.type for c in metadata["dagster/column_schema"].schema.columns}
    assert set(columns) == {"shard", "n", "note"}
    uri = DeltaStore(root=storage_root).table_uri("numbers")
    assert metadata["delta/uri"].value == uri
    assert metadata["dagster/table_name"].value == uri
    assert metadata["delta/version"].value == 1
    preview = metadata["preview"].value
    assert preview.splitlines()[0].startswith("| ") and "row of c" in preview

    # The run that wrote each version is in the Delta log too.
    commit = DeltaStore(root=storage_root).delta_table("numbers").history(1)[0]
    assert commit["dagster.run_id"] == result.run_id
    assert commit["dagster.asset_key"] == "numbers"


def test_a_missing_upstream_table_fails_with_a_clear_message(resources, shards_instance):
    result = dg.materialize(
        ASSETS,
        selection=[doubled],
        resources=resources,
        instance=shards_instance,
        partition_key="a",
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "has not been materialized" in str(failure.step_failure_data.error)


def test_markdown_preview_is_a_small_safe_table():
    frame = pl.DataFrame({"shard": ["a"] * 8, "text": ["x | y\n" + "z" * 200] * 8, "n": list(range(8))})
    lines = markdown_preview(frame).splitlines()
    assert len(lines) == 2 + 5
    assert lines[2].count(" | ") == 2  # the pipe inside the text is escaped, the newline folded
    assert len(lines[2]) < 140
    assert markdown_preview(frame.head(0)) == "_no rows_"

"""The raw_text asset in real in-process runs, and the shard sensor that feeds it."""

import json
import time
from importlib import resources as package_files
from pathlib import Path

import dagster as dg
import polars as pl

from persona_hub_dagster.defs.partitions import register_shards, text_shards
from persona_hub_dagster.defs.raw_text.assets import ingest_raw_text
from persona_hub_dagster.defs.raw_text.sensors import text_shard_sensor
from persona_hub_dagster.defs.resources import ShardSourceResource
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.shard_files import shard_file
from persona_hub_dagster.lib.shards import ShardRegistry
from persona_hub_dagster.lib.storage import DeltaStore

SAMPLE = Path(str(package_files.files("persona_hub_dagster") / "data" / "sample_corpus.jsonl"))


def texts(n: int, prefix: str = "text") -> list[str]:
    return [f"{prefix} number {i}: long enough to be kept by the cleaning rules." for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def register(instance, store, path: Path, key: str, **kwargs) -> None:
    register_shards(
        instance,
        ShardRegistry(store),
        [shard_file(filesystems.stat(str(path)), key=key)],
        registered_by="test",
        **kwargs,
    )


def run_raw_text(instance, store, shard, run_config=None, raise_on_error=True) -> dg.ExecuteInProcessResult:
    storage = DeltaStorageResource(root=store.root)
    return dg.materialize(
        [ingest_raw_text],
        partition_key=shard,
        instance=instance,
        resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage)},
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def test_the_bundled_sample_corpus_is_diverse_and_ingests_cleanly(instance, local_store):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert 140 <= len(rows) <= 200
    assert len({r["domain"] for r in rows}) >= 60 and len({r["register"] for r in rows}) >= 60
    register(instance, local_store, SAMPLE, "sample")
    result = run_raw_text(instance, local_store, "sample")
    assert local_store.row_count("raw_text", ["sample"]) == len(rows)
    assert local_store.row_count("raw_text_rejects", ["sample"]) == 0
    fields = [json.loads(f) for f in local_store.read("raw_text")["source_fields"]]
    assert len({f["title"] for f in fields}) == len(rows)  # the other fields travel along as source_fields
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_a_shard_lands_in_raw_text_and_raw_text_rejects(instance, store, tmp_path):
    path = write_jsonl(
        tmp_path / "web.jsonl",
        [{"text": t, "url": f"https://example.com/{i}"} for i, t in enumerate(texts(5))]
        + [{"text": "tiny"}, {"body": "no text"}, {"text": texts(1)[0]}],
    )
    register(instance, store, path, "web")
    result = run_raw_text(instance, store, "web")

    raw = store.read("raw_text")
    assert raw.height == 5 and set(raw["shard"]) == {"web"}
    assert set(raw["run_id"]) == {result.run_id}
    assert {"text_id", "shard", "source_uri", "text", "n_chars", "ingested_at", "run_id"} <= set(raw.columns)
    rejects = store.read("raw_text_rejects")
    assert sorted(rejects["reason"].to_list()) == ["duplicate", "missing_text", "too_short"]

    materializations = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.get_asset_materialization_events()
        and [e.materialization for e in result.get_asset_materialization_events()]
    }
    texts_meta, rejects_meta = materializations["raw_text"], materializations["raw_text_rejects"]
    assert texts_meta["dagster/partition_row_count"].value == 5
    assert texts_meta["records_read"].value == 8
    assert texts_meta["rejected_rows"].value == 3
    assert texts_meta["rejected_by_reason"].value == {"duplicate": 1, "missing_text": 1, "too_short": 1}
    assert texts_meta["delta/uri"].value == store.table_uri("raw_text")
    assert "dagster/column_schema" in texts_meta and "preview" in texts_meta
    assert rejects_meta["dagster/partition_row_count"].value == 3

    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["text_ids_unique"].passed
    assert checks["reject_rate"].passed  # 3/8 <= 0.5


def test_rematerializing_a_shard_replaces_only_that_shard(instance, local_store, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts(4, "alpha")])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts(3, "beta")] + [{"text": "x"}])
    register(instance, local_store, a, "a")
    register(instance, local_store, b, "b")
    run_raw_text(instance, local_store, "a")
    run_raw_text(instance, local_store, "b")

    write_jsonl(a, [{"text": t} for t in texts(2, "alpha v2")])
    register(instance, local_store, a, "a")
    run_raw_text(instance, local_store, "a")

    raw = local_store.read("raw_text")
    assert raw.filter(pl.col("shard") == "a")["text"].str.starts_with("alpha v2").all()
    assert raw.group_by("shard").len().sort("shard").rows() == [("a", 2), ("b", 3)]
    assert local_store.read("raw_text_rejects")["shard"].to_list() == ["b"]


def test_run_config_changes_the_cleaning(instance, local_store, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": t} for t in texts(3)])
    register(instance, local_store, path, "c")
    config = {"ops": {"ingest_raw_text": {"config": {"text_column": "body", "max_chars": 30}}}}
    result = run_raw_text(instance, local_store, "c", run_config=config)
    assert local_store.row_count("raw_text", ["c"]) == 0
    assert set(local_store.read("raw_text_rejects")["reason"]) == {"too_long"}
    reject_rate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "reject_rate")
    assert not reject_rate.passed and reject_rate.severity == dg.AssetCheckSeverity.WARN


def test_a_registered_text_column_wins_over_the_config_default(instance, local_store, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": t} for t in texts(3)])
    register(instance, local_store, path, "d", text_column="body")
    run_raw_text(instance, local_store, "d")
    assert local_store.row_count("raw_text", ["d"]) == 3


def test_unusable_shards_fail_with_the_file_and_the_problem(instance, local_store, tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"body": t} for t in texts(3)])
    register(instance, local_store, path, "e")
    result = run_raw_text(instance, local_store, "e", raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert "Shard 'e' cannot be ingested" in failure.user_failure_data.description
    assert "no record has the text field 'text'" in failure.user_failure_data.description
    assert not local_store.exists("raw_text")  # nothing was committed

    instance.add_dynamic_partitions(text_shards.name, ["ghost"])  # e.g. added by hand in the UI
    result = run_raw_text(instance, local_store, "ghost", raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert "Shard 'ghost' is not registered" in failure.user_failure_data.description


# ------------------------------------------------------------------------------------------------ sensor


def sensor_context(instance, location: str, store: DeltaStore, cursor=None):
    return dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "shard_source": ShardSourceResource(location=location),
            "storage": DeltaStorageResource(root=store.root),
        },
    )


def evaluate(instance, location, store, cursor=None):
    result = text_shard_sensor(sensor_context(instance, location, store, cursor))
    if isinstance(result, dg.SensorResult) and result.dynamic_partitions_requests:
        for request in result.dynamic_partitions_requests:  # what the daemon does with the result
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_sensor_registers_new_files_and_requests_their_runs(instance, local_store, tmp_path):
    source = tmp_path / "corpus"
    source.mkdir()
    write_jsonl(source / "one.jsonl", [{"text": t} for t in texts(2)])
    (source / "two.csv").write_text("text\n" + "\n".join(texts(2)) + "\n")
    (source / "README.md").write_text("not a shard")

    result = evaluate(instance, str(source), local_store)
    assert sorted(r.partition_key for r in result.run_requests) == ["one", "two"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["one", "two"]
    assert sorted(instance.get_dynamic_partitions("text_shards")) == ["one", "two"]
    assert ShardRegistry(local_store).get("two").format == "csv"
    assert all(r.run_key.startswith(f"{r.partition_key}@") for r in result.run_requests)

    # Nothing changed: the cursor short-circuits.
    again = evaluate(instance, str(source), local_store, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)

    # A new file and a changed file: one new partition, two runs.
    write_jsonl(source / "three.jsonl", [{"text": t} for t in texts(1)])
    time.sleep(0.01)
    write_jsonl(source / "one.jsonl", [{"text": t} for t in texts(3)])
    later = evaluate(instance, str(source), local_store, cursor=result.cursor)
    assert sorted(r.partition_key for r in later.run_requests) == ["one", "three"]
    assert later.dynamic_partitions_requests[0].partition_keys == ["three"]
    assert ShardRegistry(local_store).frame()["shard"].to_list()[0] == "one"  # its place in the order is kept


def test_sensor_recovers_a_registration_without_partition(instance, local_store, tmp_path):
    """A tick that registered a file but died before Dagster added the partition is completed by the next one."""
    source = tmp_path / "corpus"
    source.mkdir()
    path = write_jsonl(source / "late.jsonl", [{"text": t} for t in texts(1)])
    ShardRegistry(local_store).register([shard_file(filesystems.stat(str(path)))], registered_by="crashed tick")
    result = evaluate(instance, str(source), local_store)
    assert [r.partition_key for r in result.run_requests] == ["late"]
    assert instance.has_dynamic_partition("text_shards", "late")


def test_sensor_leaves_hand_registered_keys_alone(instance, local_store, tmp_path):
    elsewhere = write_jsonl(tmp_path / "elsewhere.jsonl", [{"text": t} for t in texts(1)])
    register(instance, local_store, elsewhere, "news")
    source = tmp_path / "corpus"
    source.mkdir()
    write_jsonl(source / "news.jsonl", [{"text": t} for t in texts(1)])
    result = evaluate(instance, str(source), local_store)
    assert not result.run_requests and result.skip_reason
    assert ShardRegistry(local_store).get("news").source_uri == str(elsewhere)


def test_sensor_watches_s3(instance, s3_bucket, tmp_path):
    import boto3

    store = DeltaStore(root=f"s3://{s3_bucket}/delta")
    s3 = boto3.client("s3")
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts(3)).encode()
    s3.put_object(Bucket=s3_bucket, Key="corpus/batch-01.jsonl", Body=body)
    result = evaluate(instance, f"s3://{s3_bucket}/corpus", store)
    assert [r.partition_key for r in result.run_requests] == ["batch-01"]

    run_raw_text(instance, store, "batch-01")
    assert store.row_count("raw_text", ["batch-01"]) == 3
    assert store.read("raw_text")["source_uri"].unique().to_list() == [f"s3://{s3_bucket}/corpus/batch-01.jsonl"]


def test_an_empty_file_is_ingested_with_a_warning_and_a_failing_check(instance, local_store, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    register(instance, local_store, path, "empty")
    result = run_raw_text(instance, local_store, "empty")
    assert local_store.row_count("raw_text", ["empty"]) == 0
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["empty_file"].value is True and metadata["records_read"].value == 0
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["has_records"].passed and checks["has_records"].severity == dg.AssetCheckSeverity.WARN
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("holds no record at all" in message for message in logged)


def test_a_huge_rejected_record_is_capped_and_stays_out_of_the_delta_log(instance, local_store, tmp_path):
    huge = "word " * 2_100_000  # 10.5 MB: rejected as too_long
    path = write_jsonl(tmp_path / "huge.jsonl", [{"text": huge}, {"text": texts(1)[0]}])
    register(instance, local_store, path, "huge")
    run_raw_text(instance, local_store, "huge")
    reject = local_store.read("raw_text_rejects", ["huge"]).row(0, named=True)
    assert reject["reason"] == "too_long" and len(reject["raw"]) == 64 * 1024
    assert reject["raw_chars"] > 10_000_000 and len(reject["raw_hash"]) == 32
    log = Path(local_store.table_uri("raw_text_rejects")) / "_delta_log"
    assert max(f.stat().st_size for f in log.glob("*.json")) < 64 * 1024  # no min/max of the raw text in the log


def test_sensor_registers_files_in_the_personas_folder_as_persona_shards(instance, local_store, tmp_path):
    source = tmp_path / "corpus"
    (source / "personas").mkdir(parents=True)
    write_jsonl(source / "personas" / "crowd.jsonl", [{"persona": "A ferry captain who reads tide tables"}])
    write_jsonl(source / "web.jsonl", [{"text": t} for t in texts(1)])
    # A persona file registered by hand outside the folder keeps the kind it was given.
    mine = write_jsonl(source / "mine.jsonl", [{"who": "A beekeeper who tests soil acidity"}])
    ShardRegistry(local_store).register(
        [shard_file(filesystems.stat(str(mine)), kind="personas")], registered_by="test", text_column="who"
    )
    result = evaluate(instance, str(source), local_store)
    assert sorted(r.partition_key for r in result.run_requests) == ["mine", "personas-crowd", "web"]
    registry = ShardRegistry(local_store)
    assert [registry.get(k).kind for k in ("personas-crowd", "web", "mine")] == ["personas", "text", "personas"]
    time.sleep(0.01)
    write_jsonl(mine, [{"who": "A beekeeper who tests soil acidity"}, {"who": "A welder who restores boats"}])
    evaluate(instance, str(source), local_store, cursor=result.cursor)
    assert registry.get("mine").kind == "personas" and registry.get("mine").text_column == "who"

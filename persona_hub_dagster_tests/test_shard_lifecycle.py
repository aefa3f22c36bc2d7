"""Registration order under concurrency, key validation, and taking a shard out: a shard that can never be ingested
stops blocking the hub once it is unregistered, every table loses its rows, and lineage stays consistent."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest

from persona_hub_dagster.defs.hub.checks import prefix_complete
from persona_hub_dagster.defs.jobs import unregister_shard_job
from persona_hub_dagster.defs.partitions import unregister_shards
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.llm.cache import ResponseCache, cache_namespace
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.shard_files import InvalidShard, ShardFile, validate_shard_key
from persona_hub_dagster.lib.shards import ShardRegistry, unregister_shard
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.helpers.hub_run import NURSE, PILOT, SAILOR, TEACHER, check, personas

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("trial", range(5))
def test_concurrent_registrations_get_distinct_places_in_the_order(tmp_path, trial):
    store = DeltaStore(root=str(tmp_path / "delta"))
    barrier = threading.Barrier(3)
    errors = []

    def register(key: str):
        try:
            barrier.wait()
            ShardRegistry(DeltaStore(root=store.root)).register(
                [ShardFile(key, f"/data/{key}.jsonl", "jsonl", None, 1, None)], registered_by="test"
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(key,)) for key in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seqs = ShardRegistry(store).frame()["registration_seq"].to_list()
    assert len(seqs) == 3 and len(set(seqs)) == 3, seqs


def test_a_key_with_a_trailing_newline_or_other_lookalike_is_refused():
    assert validate_shard_key("news-2024") == "news-2024"
    for bad in ("news-2024\n", "news-2024 ", "\nnews", "News", "a/b", ""):
        with pytest.raises(InvalidShard):
            validate_shard_key(bad)


@pytest.mark.slow
def test_an_unregistered_shard_no_longer_blocks_the_hub_and_leaves_no_rows(hub, instance):
    store, register, run = hub
    register("broken", "s2", "s3")  # "broken": a file that can never be ingested, so it never gets a hub
    store.write_partitions("text_personas", personas("s2", [NURSE, SAILOR]), partitions=["s2"])
    store.write_partitions(
        "text_personas", personas("s3", [NURSE.replace("works", "works gladly"), PILOT]), partitions=["s3"]
    )
    cache = ResponseCache(store, cache_namespace("text_personas", "s2"))
    cache.put({"k": Completion('{"persona": "x"}', "stop")}, backend="test", model="m")
    ResponseCache(store, cache_namespace("text_personas", "broken")).put(
        {"k": Completion('{"persona": "y"}', "stop")}, backend="test", model="m"
    )

    blocked = run("s2")
    assert not check(blocked, "prefix_complete").passed  # "broken" registered earlier, no hub: blocking

    plan = unregister_shard(store, "broken", dry_run=True)
    assert plan == {"_cache/llm_responses": 1, "_meta/text_shards": 1}
    assert unregister_shards(instance, store, "broken") == plan
    assert not instance.has_dynamic_partition("text_shards", "broken")
    assert "broken" not in ShardRegistry(store).frame()["shard"].to_list()
    assert len(ResponseCache(store, cache_namespace("text_personas", "s2"))) == 1  # other shards keep theirs

    assert check(run("s2"), "prefix_complete").passed
    assert check(run("s3"), "prefix_complete").passed
    s3 = {r["persona"]: r for r in store.read("persona_hub_decisions", ["s3"]).iter_rows(named=True)}
    assert s3[NURSE.replace("works", "works gladly")]["duplicate_of_shard"] == "s2"

    # Taking out s2, which s3 was deduplicated against: its rows go everywhere, and s3 is flagged for a rebuild.
    deleted = unregister_shards(instance, store, "s2")
    assert {"text_personas", "persona_hub", "persona_hub_decisions", "_index/persona_hub/runs"} <= set(deleted)
    for name in store.tables():
        frame = store.scan(name)
        if "shard" in frame.collect_schema().names() and name != tables.SHARD_REGISTRATIONS.name:
            assert frame.filter(pl.col("shard") == "s2").collect().is_empty(), name
    flagged = prefix_complete(storage=DeltaStorageResource(root=store.root))
    assert not flagged.passed and flagged.metadata["rebuild_in_order"].value == ["s3"]
    assert check(run("s3"), "prefix_complete").passed  # rebuilt against what is left
    s3 = {r["persona"]: r for r in store.read("persona_hub_decisions", ["s3"]).iter_rows(named=True)}
    assert all(r["duplicate_of_shard"] != "s2" for r in s3.values())  # lineage points only at existing shards
    assert s3[NURSE.replace("works", "works gladly")]["decision"] == "kept"


def test_unregistering_from_the_ui_job_reports_first_and_deletes_on_confirmation(tmp_path, instance):
    store = DeltaStore(root=str(tmp_path / "delta"))
    ShardRegistry(store).register([ShardFile("gone", "/data/gone.jsonl", "jsonl", None, 1, None)], registered_by="t")
    instance.add_dynamic_partitions("text_shards", ["gone"])
    store.write_partitions("raw_text", personas("gone", [TEACHER]).rename({"persona": "text"}), partitions=["gone"])
    resources = {"storage": DeltaStorageResource(root=store.root)}
    dry = unregister_shard_job.execute_in_process(
        run_config={"ops": {"unregister_shard_op": {"config": {"shard": "gone"}}}},
        instance=instance,
        resources=resources,
    )
    assert (
        dry.success
        and store.row_count("raw_text", ["gone"]) == 1
        and instance.has_dynamic_partition("text_shards", "gone")
    )
    done = unregister_shard_job.execute_in_process(
        run_config={"ops": {"unregister_shard_op": {"config": {"shard": "gone", "confirm": True}}}},
        instance=instance,
        resources=resources,
    )
    assert done.success and store.row_count("raw_text") == 0
    assert not instance.has_dynamic_partition("text_shards", "gone")


@pytest.mark.slow
def test_the_cli_shows_what_goes_and_asks_before_deleting(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PERSONA_HUB_STORAGE": str(tmp_path / "delta")}
    path = tmp_path / "notes.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"A note about harbour number {i} and its pilots."}) + "\n" for i in range(3))
    )

    def cli(*args, stdin=None):
        return subprocess.run(
            [sys.executable, "-m", "persona_hub_dagster.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=300,
        )

    assert cli("register-shard", str(path)).returncode == 0
    assert cli("materialize", "notes", "--job", "land_text_shard").returncode == 0
    refused = cli("unregister-shard", "notes")
    assert refused.returncode == 2 and "3 rows of raw_text" in refused.stdout and "--yes" in refused.stderr
    done = cli("unregister-shard", "notes", "--yes")
    assert done.returncode == 0 and "unregistered shard 'notes'" in done.stdout
    assert "notes" not in cli("shards").stdout
    assert DeltaStore(root=env["PERSONA_HUB_STORAGE"]).row_count("raw_text") == 0

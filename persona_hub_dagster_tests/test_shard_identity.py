"""A watched file is never shadowed by a new one, and a renamed or copied file is recognized (issue 22, item 4).

The shard sensor only registers files and yields run requests here: nothing is ingested, no model runs."""

import json
import logging
import os
import shutil
import time
from pathlib import Path

import boto3
import dagster as dg
import pytest

from persona_hub_dagster import cli
from persona_hub_dagster.defs.raw_text.sensors import text_shard_sensor
from persona_hub_dagster.defs.resources import ShardSourceResource
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.shard_files import shard_file
from persona_hub_dagster.lib.shard_identity import content_digest
from persona_hub_dagster.lib.shards import ShardRegistry
from persona_hub_dagster.lib.storage import DeltaStore


def write_texts(path: Path, *texts: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


class Ticks:
    """Sensor ticks as the daemon runs them: each tick gets the previous tick's cursor, and the partitions it asks
    for are added. `log` holds every (level, message) the last tick logged."""

    def __init__(self, instance, location: str, store: DeltaStore):
        self.instance, self.location, self.store = instance, location, store
        self.cursor: str | None = None
        self.log: list[tuple[str, str]] = []

    def __call__(self) -> dg.SensorResult | dg.SkipReason:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={
                "shard_source": ShardSourceResource(location=self.location),
                "storage": DeltaStorageResource(root=self.store.root),
            },
        )
        self.log = []
        log = self.log

        class Record(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                log.append((record.levelname, record.getMessage()))

        context.log.addHandler(Record())
        result = text_shard_sensor(context)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            self.cursor = result.cursor
        return result

    def runs(self, result) -> list[str]:
        return sorted(r.partition_key for r in getattr(result, "run_requests", None) or [])

    def warnings(self, about: str) -> list[str]:
        return [message for level, message in self.log if level == "WARNING" and about in message]

    def infos(self, about: str) -> list[str]:
        return [message for level, message in self.log if about in message]

    @property
    def partitions(self) -> list[str]:
        return sorted(self.instance.get_dynamic_partitions("text_shards"))


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    return folder


@pytest.fixture
def ticks(instance, local_store, source) -> Ticks:
    return Ticks(instance, str(source), local_store)


@pytest.mark.parametrize(("registered", "newcomer"), [("news.jsonl", "news.csv"), ("f006.jsonl", "F006.JSONL")])
def test_a_new_file_cannot_take_the_key_of_a_watched_one(ticks, local_store, source, registered, newcomer):
    key = registered.split(".")[0]
    watched = write_texts(source / registered, "the watched file, first version")
    assert ticks.runs(ticks()) == [key]

    if newcomer.endswith(".csv"):
        (source / newcomer).write_text("text\nthe newcomer, which sorts before the watched file\n")
    else:
        write_texts(source / newcomer, "the newcomer, which sorts before the watched file")
    result = ticks()
    assert ticks.runs(result) == [] and ticks.partitions == [key]
    assert ShardRegistry(local_store).get(key).source_uri == str(watched)
    assert ShardRegistry(local_store).frame()["shard"].to_list() == [key]
    (refusal,) = ticks.warnings(newcomer)
    assert registered in refusal and f"'{key}'" in refusal
    assert f"persona-hub register-shard {source / newcomer} --key" in refusal and "rename" in refusal.lower()

    # The watched file stays watched: its next edit is ingested under its key.
    time.sleep(0.01)
    write_texts(watched, "the watched file, first version", "and a second record")
    result = ticks()
    assert ticks.runs(result) == [key]
    assert ShardRegistry(local_store).get(key).fingerprint == shard_file(filesystems.stat(str(watched))).fingerprint
    assert ticks.warnings(newcomer)  # every tick that looks at the folder says why the newcomer is skipped


def test_two_new_files_with_one_key_the_first_by_name_wins_and_the_other_is_named(ticks, local_store, source):
    (source / "news.csv").write_text("text\nthe csv version\n")
    write_texts(source / "news.jsonl", "the jsonl version")
    assert ticks.runs(ticks()) == ["news"]
    assert ShardRegistry(local_store).get("news").source_uri == str(source / "news.csv")
    (refusal,) = ticks.warnings("news.jsonl")
    assert "news.csv" in refusal and "--key" in refusal


def test_a_file_registered_by_hand_under_its_own_key_keeps_it(ticks, local_store, source, instance):
    path = write_texts(source / "news.jsonl", "registered by hand")
    ShardRegistry(local_store).register([shard_file(filesystems.stat(str(path)), key="world-news")], registered_by="t")
    instance.add_dynamic_partitions("text_shards", ["world-news"])
    result = ticks()
    assert ticks.runs(result) == [] and ticks.partitions == ["world-news"]  # no second shard 'news' for it
    assert ShardRegistry(local_store).frame()["shard"].to_list() == ["world-news"]
    time.sleep(0.01)
    write_texts(path, "registered by hand", "then edited")
    assert ticks.runs(ticks()) == ["world-news"]


def test_a_renamed_file_takes_its_shard_along(ticks, local_store, source):
    old = write_texts(source / "news.jsonl", "a text that moves", "and another")
    assert ticks.runs(ticks()) == ["news"]
    before = ShardRegistry(local_store).get("news")
    assert before.content_digest == content_digest(str(old))

    new = source / "2024" / "news-archive.jsonl"
    new.parent.mkdir()
    os.rename(old, new)
    result = ticks()
    assert ticks.runs(result) == [] and not getattr(result, "dynamic_partitions_requests", None)
    assert ticks.partitions == ["news"]
    after = ShardRegistry(local_store).get("news")
    assert after.source_uri == str(new) and after.registration_seq == before.registration_seq
    assert ShardRegistry(local_store).frame().height == 1
    (moved,) = ticks.infos(" moved to ")
    assert str(old) in moved and str(new) in moved and "'news'" in moved

    time.sleep(0.01)
    write_texts(new, "a text that moves", "and another", "edited after the move")
    assert ticks.runs(ticks()) == ["news"]


def test_a_copy_is_not_registered_and_the_log_says_how_to_ingest_it(ticks, local_store, source):
    original = write_texts(source / "news.jsonl", "the same texts", "twice")
    ticks()
    shutil.copyfile(original, source / "news-copy.jsonl")
    result = ticks()
    assert ticks.runs(result) == [] and ticks.partitions == ["news"]
    assert ShardRegistry(local_store).frame()["shard"].to_list() == ["news"]
    (copy,) = ticks.warnings("news-copy.jsonl")
    assert "copy of shard 'news'" in copy and str(original) in copy
    assert f"persona-hub register-shard {source / 'news-copy.jsonl'} --key" in copy


def test_two_new_identical_files_make_one_shard(ticks, local_store, source):
    write_texts(source / "a.jsonl", "identical")
    write_texts(source / "b.jsonl", "identical")
    assert ticks.runs(ticks()) == ["a"]
    (copy,) = ticks.warnings("b.jsonl")
    assert "copy of shard 'a'" in copy


def test_a_new_file_whose_key_belongs_to_a_deleted_shard_is_told_how_to_free_it(ticks, local_store, source):
    old = write_texts(source / "news.jsonl", "the old file, deleted later")
    ticks()
    old.unlink()
    (source / "news.csv").write_text("text\nsomething else entirely\n")
    assert ticks.runs(ticks()) == []
    (refusal,) = ticks.warnings("news.csv")
    assert "which is gone" in refusal and "persona-hub unregister-shard news" in refusal


def test_a_file_replaced_under_its_name_keeps_the_key_and_its_old_version_is_a_new_shard(ticks, local_store, source):
    path = write_texts(source / "news.jsonl", "yesterday's news")
    ticks()
    os.rename(path, source / "news-old.jsonl")
    time.sleep(0.01)
    write_texts(path, "today's news, a different file")
    assert ticks.runs(ticks()) == ["news", "news-old"]
    registry = ShardRegistry(local_store)
    assert registry.get("news").source_uri == str(path)
    assert registry.get("news").content_digest == content_digest(str(path))
    assert registry.get("news-old").source_uri == str(source / "news-old.jsonl")


def test_a_registry_from_before_digests_gets_them_and_then_recognizes_a_rename(ticks, local_store, source):
    old = write_texts(source / "news.jsonl", "registered before content digests")
    ticks()
    frame = local_store.read(tables.SHARD_REGISTRY).drop("content_digest")
    local_store.write_partitions(tables.SHARD_REGISTRY, frame, partitions=None)
    assert ShardRegistry(local_store).get("news").content_digest is None

    ticks.cursor = None  # a deployment upgraded: the first tick looks at the folder again
    ticks()
    assert ShardRegistry(local_store).get("news").content_digest == content_digest(str(old))
    os.rename(old, source / "renamed.jsonl")
    assert ticks.runs(ticks()) == []
    assert ShardRegistry(local_store).get("news").source_uri == str(source / "renamed.jsonl")


def test_the_digest_reads_head_and_tail_through_the_filesystem_layer_and_a_move_on_s3_is_followed(
    instance, s3_bucket, tmp_path
):
    big = b"".join(b'{"text": "record %07d with some words in it"}\n' % i for i in range(60_000))  # ~2.9 MB
    assert len(big) > 2 * (1 << 20)
    local = tmp_path / "big.jsonl"
    local.write_bytes(big)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="corpus/batch-01.jsonl", Body=big)
    uri = f"s3://{s3_bucket}/corpus/batch-01.jsonl"
    assert content_digest(uri) == content_digest(str(local))
    local.write_bytes(big[:-2] + b"}\n".replace(b"}", b" "))  # the same size, another last byte
    assert content_digest(str(local)) != content_digest(uri)

    store = DeltaStore(root=f"s3://{s3_bucket}/delta")
    ticks = Ticks(instance, f"s3://{s3_bucket}/corpus", store)
    assert ticks.runs(ticks()) == ["batch-01"]
    assert ShardRegistry(store).get("batch-01").content_digest == content_digest(uri)

    # An object store has no rename: a move is a copy and a delete, so the object is newer and is ingested again,
    # under the key it had.
    s3.copy_object(Bucket=s3_bucket, Key="corpus/2024/batch-01.jsonl", CopySource=f"{s3_bucket}/corpus/batch-01.jsonl")
    s3.delete_object(Bucket=s3_bucket, Key="corpus/batch-01.jsonl")
    result = ticks()
    assert not getattr(result, "dynamic_partitions_requests", None) and ticks.partitions == ["batch-01"]
    assert ShardRegistry(store).get("batch-01").source_uri == f"s3://{s3_bucket}/corpus/2024/batch-01.jsonl"
    assert ticks.infos(" moved to ")
    assert ticks.runs(result) in ([], ["batch-01"])


def test_register_shard_by_hand_records_the_digest_and_registers_a_copy_only_with_a_key(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONA_HUB_STORAGE", str(tmp_path / "delta"))
    original = write_texts(tmp_path / "news.jsonl", "texts registered by hand")
    copy = tmp_path / "news-copy.jsonl"
    shutil.copyfile(original, copy)

    assert cli.main(["register-shard", str(original)]) == 0
    registry = ShardRegistry(DeltaStore(root=str(tmp_path / "delta")))
    assert registry.get("news").content_digest == content_digest(str(original))

    capsys.readouterr()
    assert cli.main(["register-shard", str(copy)]) == 2
    refused = capsys.readouterr().err
    assert "same content as shard 'news'" in refused and "--key" in refused
    assert cli.main(["register-shard", str(copy), "--key", "news"]) == 2  # a key is never silently re-pointed
    assert cli.main(["register-shard", str(copy), "--key", "news-again"]) == 0  # a copy, deliberately
    assert "same content as shard 'news'" in capsys.readouterr().out
    assert registry.get("news-again").source_uri == str(copy)

"""Shard keys, discovery under a source location, and the shard registry (local and S3)."""

import time

import boto3
import pytest

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.shard_files import (
    InvalidShard,
    detect_format,
    shard_file,
    shard_key_for,
    validate_shard_key,
)
from persona_hub_dagster.lib.shard_identity import discover_shard_files
from persona_hub_dagster.lib.shards import ShardConflict, ShardRegistry, UnknownShard


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("sample.jsonl", "sample"),
        ("fineweb/part-00017.parquet", "fineweb-part-00017"),
        ("C4 En/Train File.JSONL.gz", "c4-en-train-file"),
        ("weird__name!!.txt", "weird__name"),
        ("v1.2/data.csv", "v1.2-data"),
    ],
)
def test_keys_are_readable_and_stable(path, key):
    assert shard_key_for(path) == key


def test_long_paths_get_a_short_unique_key():
    a = shard_key_for("x" * 150 + "/a.jsonl")
    b = shard_key_for("x" * 150 + "/b.jsonl")
    assert a != b and len(a) <= 100 and validate_shard_key(a) == a


@pytest.mark.parametrize("key", ["", "-lead", "UPPER", "has space", "quote'", "a" * 101])
def test_invalid_keys_are_refused(key):
    with pytest.raises(InvalidShard):
        validate_shard_key(key)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jsonl", ("jsonl", None)),
        ("a.ndjson.zst", ("jsonl", "zstd")),
        ("a.csv.gz", ("csv", "gzip")),
        ("a.txt.bz2", ("txt", "bz2")),
        ("a.parquet", ("parquet", None)),
        ("a.parquet.gz", None),
        ("a.md", None),
        ("a.gz", None),
    ],
)
def test_formats_come_from_suffixes(name, expected):
    assert detect_format(name) == expected


def test_discovery_skips_what_is_not_a_shard(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "part-1.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "b.csv").write_text("text\nhello\n")
    (tmp_path / "b.txt").write_text("a clash with b.csv\n")
    (tmp_path / "notes.md").write_text("# not a shard\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / ".hidden.jsonl").write_text("{}\n")
    (tmp_path / "_tmp").mkdir()
    (tmp_path / "_tmp" / "partial.jsonl").write_text("{}\n")

    found = discover_shard_files(str(tmp_path))
    assert [(f.key, f.format) for f in found.files] == [("b", "csv"), ("nested-part-1", "jsonl")]
    clash, *others = found.skipped[::-1]
    assert sorted(others) == ["empty.jsonl: empty file (still being written?)", "notes.md: not a shard format"]
    assert clash.startswith(f"{tmp_path / 'b.txt'}: its key 'b' is taken by {tmp_path / 'b.csv'}")
    assert f"`persona-hub register-shard {tmp_path / 'b.txt'} --key OTHER`" in clash
    assert discover_shard_files(str(tmp_path / "does-not-exist")).files == []


def test_discovery_on_s3(s3_bucket):
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="corpus/web/part-0.jsonl", Body=b'{"text": "x"}\n')
    s3.put_object(Bucket=s3_bucket, Key="corpus/books.txt.gz", Body=b"...")
    found = discover_shard_files(f"s3://{s3_bucket}/corpus/")
    assert [(f.key, f.uri, f.compression) for f in found.files] == [
        ("books", f"s3://{s3_bucket}/corpus/books.txt.gz", "gzip"),
        ("web-part-0", f"s3://{s3_bucket}/corpus/web/part-0.jsonl", None),
    ]
    assert all(f.size_bytes > 0 and f.modified_at is not None for f in found.files)


def test_fingerprint_changes_when_the_file_does(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "one"}\n')
    before = shard_file(filesystems.stat(str(path))).fingerprint
    time.sleep(0.01)
    path.write_text('{"text": "one, and two"}\n')
    assert shard_file(filesystems.stat(str(path))).fingerprint != before


def test_registry_round_trip_order_and_conflicts(store, tmp_path):
    files = []
    for name in ["first", "second", "third"]:
        path = tmp_path / f"{name}.jsonl"
        path.write_text('{"text": "x"}\n')
        files.append(shard_file(filesystems.stat(str(path))))
    registry = ShardRegistry(store)
    registry.register(files[:2], registered_by="test")
    registry.register(files[2:], registered_by="test", text_column="body")

    assert registry.frame()["shard"].to_list() == ["first", "second", "third"]
    seqs = [registry.get(key).registration_seq for key in ("first", "second", "third")]
    assert seqs == sorted(set(seqs))  # distinct and in registration order
    third = registry.get("third")
    assert (third.text_column, third.format) == ("body", "jsonl")

    # A changed file keeps its place in the registration order.
    (tmp_path / "first.jsonl").write_text('{"text": "changed"}\n')
    changed = shard_file(filesystems.stat(str(tmp_path / "first.jsonl")))
    registry.register([changed], registered_by="test")
    first = registry.get("first")
    assert first.registration_seq == seqs[0] and first.fingerprint == changed.fingerprint

    # The same key for another file is refused unless replaced on purpose.
    other = shard_file(filesystems.stat(str(tmp_path / "second.jsonl")), key="first")
    with pytest.raises(ShardConflict, match="already registered"):
        registry.register([other], registered_by="test")
    registry.register([other], registered_by="test", replace=True)
    assert registry.get("first").source_uri == other.uri

    with pytest.raises(UnknownShard, match="persona-hub register-shard"):
        registry.get("missing")


def test_registry_stays_compact(local_store, tmp_path):
    registry = ShardRegistry(local_store)
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "x"}\n')
    entry = filesystems.stat(str(path))
    for i in range(ShardRegistry.COMPACT_AFTER_FILES + 6):
        registry.register([shard_file(entry, key=f"k{i}")], registered_by="test")
    assert registry.frame().height == ShardRegistry.COMPACT_AFTER_FILES + 6
    assert len(local_store.delta_table(ShardRegistry.TABLE).file_uris()) < ShardRegistry.COMPACT_AFTER_FILES

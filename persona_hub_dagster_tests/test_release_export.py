"""Writing a release never destroys what a release did not write: `export --out` and the release asset's
`_releases/<task>` refuse a target holding anything else (unless forced, and then it is moved aside, not deleted),
never touch the storage root, write the new release completely before it replaces the old one, let one export at a
time at a target, and the CLI says why it could not write in one line. Local folders and s3:// prefixes on moto.

The releases here are a few rows built directly (no stages, no LLM): what is tested is where the files go."""

import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster import cli
from persona_hub_dagster.defs.release.assets import release_assets
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import filesystems, release, release_export, tables
from persona_hub_dagster.lib.locations import join_location
from persona_hub_dagster.lib.storage import DeltaStore

MARKER = ".persona-hub-release.json"


def small_release(
    task: str = "math", splits: tuple[str, ...] = ("train", "test"), items: int = 4, text_chars: int = 20
):
    """`items` items per split; `text_chars` of incompressible text each (to fill a small disk)."""
    rows = [
        {
            "item_id": uuid.uuid4().hex,
            "split": split,
            "shard": "s",
            "problem": os.urandom(text_chars // 2).hex(),
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        }
        for split in splits
        for _ in range(items)
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            **{c: pl.String for c in ("item_id", "split", "shard", "problem")},
            "messages": pl.List(release.MESSAGE),
        },
    )
    return release.Release(task=task, rows=frame, considered=frame.height)


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """A folder (or s3:// prefix) to hold the storage root and the export targets."""
    if request.param == "local":
        return str(tmp_path)
    return f"s3://{request.getfixturevalue('s3_bucket')}/work"


def files_at(location: str) -> set[str]:
    return {e.relative_path for e in filesystems.list_files(location)}


def siblings_of(target: str) -> set[str]:
    """What lies next to the target whose name starts with the target's (staging folders, locks, moved-aside)."""
    parent, name = target.rsplit("/", 1)
    return {p for p in files_at(parent) if p.split("/", 1)[0].startswith(name) and p.split("/", 1)[0] != name}


def a_table(root: str) -> DeltaStore:
    store = DeltaStore(root=root)
    store.write_partitions(tables.PERSONA_HUB, pl.DataFrame({"persona_id": ["p"], "shard": ["s"]}), partitions=["s"])
    return store


# ------------------------------------------------------------------------------------------------ finding 1


def test_export_refuses_a_target_holding_other_files_and_keeps_them(place):
    target = join_location(place, "mine")
    filesystems.write_bytes(join_location(target, "notes.txt"), b"my notes")
    with pytest.raises(release_export.ExportError, match=r"notes\.txt.*--force"):
        release_export.write(small_release(), target, storage_root=join_location(place, "delta"))
    assert files_at(target) == {"notes.txt"} and not siblings_of(target)


def test_force_moves_a_foreign_target_aside_instead_of_deleting_it(place):
    target = join_location(place, "mine")
    filesystems.write_bytes(join_location(target, "notes.txt"), b"my notes")
    written = release_export.write(small_release(), target, storage_root=join_location(place, "delta"), force=True)
    assert written.moved_aside and files_at(written.moved_aside) == {"notes.txt"}
    assert files_at(target) == set(written.files) | {MARKER}


def test_the_storage_root_its_parents_and_its_tables_are_never_a_target_even_with_force(place):
    root = join_location(place, "deep", "delta")
    store = a_table(root)
    before = files_at(root)
    for target in (root, join_location(place, "deep"), place, store.table_uri(tables.PERSONA_HUB), root + "/_releases"):
        with pytest.raises(release_export.ExportError, match="storage root"):
            release_export.write(small_release(), target, storage_root=root, force=True)
    assert files_at(root) == before and store.read(tables.PERSONA_HUB).height == 1
    # Its _releases/<task> folder is where the release asset writes.
    written = release_export.write(small_release(), release_export.release_location(store, "math"), storage_root=root)
    assert "README.md" in written.files


def test_a_re_export_replaces_its_own_release_and_only_that(place):
    target = join_location(place, "out")
    root = join_location(place, "delta")
    release_export.write(small_release(splits=("train", "test")), target, storage_root=root)
    assert "chat/test.jsonl" in files_at(target)
    second = release_export.write(small_release(splits=("train",)), target, storage_root=root, formats=("chat",))
    assert files_at(target) == {"README.md", "chat/train.jsonl", MARKER} == set(second.files) | {MARKER}
    marker = json.loads(filesystems.read_bytes(join_location(target, MARKER)))
    assert marker["task"] == "math" and marker["state"] == "complete" and sorted(second.files) == marker["files"]
    assert not siblings_of(target)  # no staging folder, no lock left behind


def test_a_release_of_another_task_is_replaced_only_when_forced(place):
    target, root = join_location(place, "out"), join_location(place, "delta")
    release_export.write(small_release("reasoning"), target, storage_root=root)
    with pytest.raises(release_export.ExportError, match="reasoning"):
        release_export.write(small_release("math"), target, storage_root=root)
    written = release_export.write(small_release("math"), target, storage_root=root, force=True)
    assert written.moved_aside is None  # a release it wrote: replaced, nothing to keep


def test_a_write_that_fails_leaves_the_previous_release_whole(place, monkeypatch):
    target, root = join_location(place, "out"), join_location(place, "delta")
    release_export.write(small_release(), target, storage_root=root)
    before = {p: filesystems.read_bytes(join_location(target, p)) for p in files_at(target)}
    real_write, calls = filesystems.write_bytes, []

    def failing_write(uri, data):
        calls.append(uri)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_write(uri, data)

    monkeypatch.setattr(filesystems, "write_bytes", failing_write)
    with pytest.raises(release_export.ExportError, match="No space left on device"):
        release_export.write(small_release(), target, storage_root=root)
    assert {p: filesystems.read_bytes(join_location(target, p)) for p in files_at(target)} == before
    assert not siblings_of(target)


def test_two_exports_at_once_one_wins_and_the_other_fails_clearly(place, monkeypatch):
    target, root = join_location(place, "out"), join_location(place, "delta")
    first_is_writing, let_first_finish = threading.Event(), threading.Event()
    real_write = filesystems.write_bytes

    def slow_write(uri, data):
        if threading.current_thread().name == "first":
            first_is_writing.set()
            assert let_first_finish.wait(30)
        return real_write(uri, data)

    monkeypatch.setattr(filesystems, "write_bytes", slow_write)
    outcome = {}
    first = threading.Thread(
        target=lambda: outcome.update(first=release_export.write(small_release(), target, storage_root=root)),
        name="first",
    )
    first.start()
    try:
        assert first_is_writing.wait(30)
        with pytest.raises(release_export.ExportError, match=r"another export to .* is in progress"):
            release_export.write(small_release(splits=("train",)), target, storage_root=root)
    finally:
        let_first_finish.set()
        first.join(30)
    assert files_at(target) == set(outcome["first"].files) | {MARKER}  # the winner's release, whole
    assert "chat/test.jsonl" in files_at(target) and not siblings_of(target)


def test_an_edited_marker_deletes_nothing_outside_the_release(place):
    target, root = join_location(place, "out"), join_location(place, "delta")
    filesystems.write_bytes(join_location(place, "victim.txt"), b"keep me")
    release_export.write(small_release(), target, storage_root=root)
    marker = json.loads(filesystems.read_bytes(join_location(target, MARKER)))
    marker["files"] += ["../victim.txt", "/victim.txt"]
    filesystems.write_bytes(join_location(target, MARKER), json.dumps(marker).encode())
    release_export.write(small_release(splits=("train",)), target, storage_root=root)
    assert filesystems.read_bytes(join_location(place, "victim.txt")) == b"keep me"


def test_an_interrupted_replacement_on_s3_is_finished_by_the_next_export(s3_bucket, monkeypatch):
    """S3 has no rename: files are copied in under a `writing` marker that lists both releases' files, so an export
    killed halfway leaves a prefix the next export recognizes as a release and cleans up."""
    target, root = f"s3://{s3_bucket}/out", f"s3://{s3_bucket}/delta"
    release_export.write(small_release(), target, storage_root=root)
    real_copy = filesystems.copy_file

    def copy_then_die(source, destination):
        if destination.endswith("README.md"):
            raise OSError("connection reset")
        real_copy(source, destination)

    monkeypatch.setattr(filesystems, "copy_file", copy_then_die)
    with pytest.raises(release_export.ExportError, match="connection reset"):
        release_export.write(
            small_release(splits=("train",), task="math"), target, storage_root=root, formats=("chat",)
        )
    assert json.loads(filesystems.read_bytes(join_location(target, MARKER)))["state"] == "writing"
    monkeypatch.setattr(filesystems, "copy_file", real_copy)
    final = release_export.write(small_release(splits=("test",)), target, storage_root=root, formats=("jsonl",))
    assert files_at(target) == set(final.files) | {MARKER} == {"README.md", "jsonl/test.jsonl", MARKER}


def test_a_mount_point_is_replaced_in_place(small_disk):
    """A mounted volume (a container's output folder) cannot be renamed: its files are replaced, the marker last."""
    target, root = str(small_disk), str(small_disk.parent / "delta")
    release_export.write(small_release(), target, storage_root=root)
    second = release_export.write(small_release(splits=("train",)), target, storage_root=root, formats=("chat",))
    assert files_at(target) == set(second.files) | {MARKER}
    assert json.loads(filesystems.read_bytes(join_location(target, MARKER)))["state"] == "complete"


def test_the_lock_has_exactly_one_winner_among_racing_writers(place):
    lock, start = join_location(place, "out.persona-hub-lock"), threading.Barrier(8)
    results = []

    def race(n: int) -> None:
        start.wait()
        results.append(filesystems.create_exclusive(lock, str(n).encode()))

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 7 + [True]


def test_a_release_folder_written_before_markers_is_still_recognized_as_one(tmp_path):
    target = tmp_path / "out"
    for path, data in release_export.release_files(
        small_release(), release_export.FORMATS
    ).items():  # the layout, no marker
        filesystems.write_bytes(str(target / path), data)
    written = release_export.write(small_release(splits=("train",)), str(target), storage_root=str(tmp_path / "delta"))
    assert written.moved_aside is None and files_at(str(target)) == set(written.files) | {MARKER}


def test_the_release_asset_refuses_a_foreign_releases_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "build", lambda store, task, settings=None: small_release(task.name))
    root = str(tmp_path / "delta")
    store = DeltaStore(root=root)
    (math,) = [a for a in release_assets if a.key.path[-1] == "math"]
    resources = {"storage": DeltaStorageResource(root=root)}
    assert dg.materialize([math], resources=resources).success
    folder = release_export.release_location(store, "math")
    assert MARKER in files_at(folder)
    filesystems.write_bytes(join_location(folder, "someone-elses.txt"), b"x")
    result = dg.materialize([math], resources=resources, raise_on_error=False)
    assert not result.success
    assert "someone-elses.txt" in str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "someone-elses.txt" in files_at(folder)


# ------------------------------------------------------------------------------------------------ finding 5


@pytest.fixture
def export(monkeypatch, tmp_path, capsys):
    """Run `persona-hub export math --out ...` in this process on a small release; (exit status, stderr lines)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONA_HUB_STORAGE", str(tmp_path / "delta"))

    def run(*arguments: str, built=None) -> tuple[int, list[str]]:
        monkeypatch.setattr(release, "build", lambda store, task, settings=None: built or small_release())
        capsys.readouterr()
        status = cli.main(["export", "math", *arguments])
        return status, capsys.readouterr().err.strip().splitlines()

    return run


def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (needs root): {mounted.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB filesystem: a real full disk (ENOSPC from the kernel, not a simulation)."""
    folder = tmp_path / "small-disk"
    mount_tmpfs(folder, "size=64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    if os.geteuid() != 0:  # permissions stop everyone but root
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount_tmpfs(folder, "ro,size=64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_export_to_a_read_only_folder_is_one_line(export, read_only_folder):
    status, lines = export("--out", str(read_only_folder / "release"))
    assert status != 0 and len(lines) == 1, lines
    assert lines[0].startswith("error:") and "read-only file system" in lines[0].lower()


def test_export_to_a_file_is_one_line(export, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    status, lines = export("--out", str(tmp_path / "a-file"), "--force")
    assert status != 0 and len(lines) == 1, lines
    assert "is a file" in lines[0] and (tmp_path / "a-file").read_text() == "mine"


def test_export_to_a_full_disk_is_one_line_with_the_os_message(export, small_disk):
    status, lines = export("--out", str(small_disk / "release"), built=small_release(items=100, text_chars=2000))
    assert status != 0 and len(lines) == 1, lines
    assert "No space left on device" in lines[0]
    assert list(small_disk.iterdir()) == []  # the staging folder and the lock are gone


def test_export_refuses_the_storage_root_in_one_line(export, tmp_path):
    store = a_table(str(tmp_path / "delta"))
    status, lines = export("--out", str(tmp_path / "delta"), "--force")
    assert status != 0 and len(lines) == 1 and "storage root" in lines[0], lines
    assert store.read(tables.PERSONA_HUB).height == 1

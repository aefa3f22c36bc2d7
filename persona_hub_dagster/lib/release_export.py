"""A release (lib/release.py builds it) written as a folder, in the Hugging Face datasets layout:

    data/{train,test}-00000-of-00001.parquet   every column, `messages` included
    jsonl/{train,test}.jsonl                   every column but `messages`, one JSON object per line
    chat/{train,test}.jsonl                    {"messages": [...]} per line
    README.md                                  the dataset card (YAML header, how it was made)
    .persona-hub-release.json                  the marker: task and files of this release (what a re-export replaces)

The `datasets` library reads the folder from local files (its "parquet" builder on data/*.parquet, or the folder
itself, whose card names the configs); nothing is fetched from a hub.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.locations import is_uri, join_location, normalize_location
from persona_hub_dagster.lib.release import Release
from persona_hub_dagster.lib.storage import DeltaStore

FORMATS = ("parquet", "jsonl", "chat")

# A release goes where a person points it (`export --out`) and where the asset keeps it (<root>/_releases/<task>);
# either place may hold other things, so writing a release never deletes what a release did not write:
# - the storage root, a folder holding it, and anything in it but a `_releases/` folder are never a target, forced
#   or not;
# - a target is replaced only when it is empty or holds a release written here (its marker lists every file);
#   anything else is refused, unless forced, and then moved aside to `<target>.replaced-<time>`, never deleted;
# - one export at a time per target: a lock file next to it that only one writer can create;
# - the new release is written whole into a staging folder next to the target before it replaces the old one, so a
#   write that fails (a full disk, a lost connection) leaves the old release as it was.

MARKER = ".persona-hub-release.json"
MARKER_FORMAT, MARKER_VERSION = "persona-hub-release", 1
RELEASES_FOLDER = "_releases"


class ExportError(Exception):
    """A release was not written, for the reason its message gives in one line; what the target held is kept."""


@dataclass(frozen=True)
class Written:
    files: dict[str, str]  # relative path -> location, for every file of the release (the marker aside)
    moved_aside: str | None = None  # where a forced write moved what the target held


def write(
    release: Release,
    location: str,
    formats: tuple[str, ...] = FORMATS,
    *,
    storage_root: str,
    force: bool = False,
) -> Written:
    """Write the release under `location` (a folder or an s3:// prefix), replacing the release written there before;
    `force` also replaces anything else there, which is moved aside. `storage_root` holds the tables: never a target."""
    target = normalize_location(location)
    _refuse_storage(target, normalize_location(storage_root))
    files = release_files(release, formats)
    try:
        with _lock(target):
            _previous_release(target, release.task, force)  # a refusal before the work
            staging = f"{target}.persona-hub-staging-{uuid.uuid4().hex}"
            try:
                for path, data in files.items():
                    filesystems.write_bytes(join_location(staging, path), data)
                filesystems.write_bytes(join_location(staging, MARKER), _marker(release.task, files))  # last: whole
                # Again: while the files were written, someone (not an export: the lock) may have added one there.
                previous = _previous_release(target, release.task, force)
                # A folder is swapped by renames; an object store has no rename, nor can a mount point be renamed.
                renamable = not is_uri(target) and not os.path.ismount(target)
                swap = _swap_by_renames if renamable else _replace_in_place
                moved_aside = swap(staging, target, previous, release.task, files)
            finally:
                filesystems.delete_dir(staging)  # a folder's swap has moved it already
    except OSError as exc:
        raise ExportError(f"could not write the release to {target}: {_reason(exc)}") from exc
    return Written({path: join_location(target, path) for path in files}, moved_aside)


def release_files(release: Release, formats: tuple[str, ...] = FORMATS) -> dict[str, bytes]:
    """{relative path: content} of every file of the release."""
    files: dict[str, bytes] = {}
    for split in release.splits():  # an empty split gets no file (datasets cannot load one)
        part = release.rows.filter(pl.col("split") == split)
        if "parquet" in formats:
            buffer = io.BytesIO()
            part.write_parquet(buffer)
            files[_file_path("parquet", split)] = buffer.getvalue()
        if "jsonl" in formats:
            files[_file_path("jsonl", split)] = _jsonl(part.drop("messages").to_dicts())
        if "chat" in formats:
            files[_file_path("chat", split)] = _jsonl({"messages": m} for m in part["messages"].to_list())
    files["README.md"] = dataset_card(release, formats).encode("utf-8")
    return files


def _file_path(format_: str, split: str) -> str:
    return {
        "parquet": f"data/{split}-00000-of-00001.parquet",
        "jsonl": f"jsonl/{split}.jsonl",
        "chat": f"chat/{split}.jsonl",
    }[format_]


def _refuse_storage(target: str, root: str) -> None:
    releases = join_location(root, RELEASES_FOLDER)
    if _contains(target, root) or (_contains(root, target) and not _contains(releases, target, strictly=True)):
        raise ExportError(
            f"refusing to write the release to {target}: it is, holds or is inside the storage root {root} (the "
            f"tables); choose a folder outside it (the release asset keeps its own under {releases}/)"
        )
    if is_uri(target) and "/" not in target.split("://", 1)[1]:
        raise ExportError(f"refusing to write the release to {target}: a whole bucket; choose a prefix inside it")


def _contains(outer: str, inner: str, *, strictly: bool = False) -> bool:
    """Whether `inner` is `outer` (unless strictly) or lies under it; both normalized, local or URIs."""
    return (inner == outer and not strictly) or inner.startswith(outer.rstrip("/") + "/")


@contextlib.contextmanager
def _lock(target: str) -> Iterator[None]:
    """One export at a time per target: a lock file next to it that only one writer can create (O_EXCL, or a
    conditional put on S3). A killed export leaves its lock; the next one's message says whose it is."""
    lock = f"{target}.persona-hub-lock"
    mine = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S UTC}",
            "id": uuid.uuid4().hex,
        }
    ).encode()
    if not filesystems.create_exclusive(lock, mine):
        holder = _read_json(lock) or {}
        raise ExportError(
            f"another export to {target} is in progress (pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}); if it is not running any more, delete {lock}"
        )
    try:
        yield
    finally:
        if _read_json(lock) == json.loads(mine):  # only ours: a lock deleted by hand may be another export's now
            filesystems.delete_file(lock)


def _previous_release(target: str, task: str, force: bool) -> frozenset[str] | None:
    """The files of the release at `target`, its marker included (empty: nothing is there), or None when something
    else is there, which only `force` replaces, by moving it aside. A file is never replaced. Only files that are
    there count, so a marker edited to list `../elsewhere` deletes nothing elsewhere."""
    if filesystems.is_file(target):
        raise ExportError(f"refusing to write the release to {target}: it is a file, and a release is a folder")
    present = {entry.relative_path for entry in filesystems.list_files(target)}
    if not present:
        return frozenset()
    marker = _read_json(join_location(target, MARKER))
    readable = marker is None or (
        (marker.get("format"), marker.get("version")) == (MARKER_FORMAT, MARKER_VERSION)
        and isinstance(marker.get("files"), list)
    )
    listed = ({*marker["files"], MARKER} if marker else _release_before_markers(target, present)) if readable else None
    if listed is not None and present <= listed:
        if marker is None or marker.get("task") == task or force:  # another task's release: replaced when forced
            return frozenset(present)
        problem, remedy = f"holds the {marker.get('task')} release, not the {task} one", "replace it"
    else:
        if force:
            return None
        stray = sorted(present - (listed or set()))
        problem = (
            f"holds files a release did not write ({', '.join(stray[:3])}{', ...' * (len(stray) > 3)})"
            if readable
            else f"has a release marker ({MARKER}) this version does not read"
        )
        remedy = "move what is there aside"
    raise ExportError(
        f"refusing to write the release to {target}: it {problem}; choose a new or empty folder, or pass --force to "
        f"{remedy}"
    )


def _release_before_markers(target: str, present: set[str]) -> set[str] | None:
    """A release written before releases had markers: nothing but release files, and a dataset card of ours."""
    layout = {"README.md"} | {_file_path(f, s) for f in FORMATS for s in ("train", "test")}
    if "README.md" not in present or not present <= layout:
        return None
    card = filesystems.read_bytes(join_location(target, "README.md"))
    return present if card.startswith(b"---\n") and b"\n# Persona Hub synthetic data: " in card else None


def _swap_by_renames(staging: str, target: str, previous: frozenset[str] | None, task: str, files) -> str | None:
    """Renames within one folder: the old release out of the way, the new one in, the old one deleted (it was a
    release: nothing else is). A reader sees the old release, for a moment nothing, then the new one."""
    if not os.path.exists(target):
        filesystems.move_dir(staging, target)
        return None
    aside = _aside(target) if previous is None else f"{target}.persona-hub-old-{uuid.uuid4().hex}"
    filesystems.move_dir(target, aside)
    try:
        filesystems.move_dir(staging, target)
    except OSError:
        filesystems.move_dir(aside, target)
        raise
    if previous is None:
        return aside
    filesystems.delete_dir(aside)
    return None


def _replace_in_place(staging: str, target: str, previous: frozenset[str] | None, task: str, files) -> str | None:
    """Without a rename of the target: the new files are copied over the old ones (on S3, inside the store), the old
    release's files the new one lacks are deleted, then the marker commits. Meanwhile the marker says `writing` and
    lists both releases' files: a reader knows the release is changing, and an export after a crash here knows what
    it may delete. Nothing the old marker does not list is deleted."""
    aside = None
    if previous is None:
        aside = _aside(target)
        filesystems.move_dir(target, aside)
    old = (previous or frozenset()) - {MARKER}
    marker = join_location(target, MARKER)
    filesystems.write_bytes(marker, _marker(task, old | set(files), state="writing"))
    for path in files:
        filesystems.copy_file(join_location(staging, path), join_location(target, path))
    for path in old - set(files):
        filesystems.delete_file(join_location(target, path))
    filesystems.write_bytes(marker, _marker(task, files))
    return aside


def _marker(task: str, files, state: str = "complete") -> bytes:
    return json.dumps(
        {
            "format": MARKER_FORMAT,
            "version": MARKER_VERSION,
            "task": task,
            "state": state,  # complete | writing (while files are copied in place: on S3, a mount point)
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": sorted(files),
        },
        indent=2,
    ).encode("utf-8")


def _aside(target: str) -> str:
    return f"{target}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def _read_json(uri: str) -> dict | None:
    try:
        value = json.loads(filesystems.read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _reason(exc: OSError) -> str:
    """The operating system's words ("No space left on device"), else the error's message, in one line."""
    if exc.errno:
        return os.strerror(exc.errno)
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8")


def dataset_card(release: Release, formats: tuple[str, ...] = FORMATS) -> str:
    counts, total = release.counts(), release.rows.height
    size = (
        "n<1K" if total < 1_000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    )
    data_files = "\n".join(f"      - split: {s}\n        path: data/{s}-*" for s in release.splits())
    header = (
        "---\n"
        'license: ""  # fill in: the licence of your corpus and of the model\'s outputs decide what this can be\n'
        f"task_categories:\n{''.join(f'  - {c}' + chr(10) for c in release.categories)}"
        "language:\n  - en\n"
        f"size_categories:\n  - {size}\n"
        "tags:\n  - synthetic\n  - persona-hub\n"
        + (
            f"configs:\n  - config_name: default\n    data_files:\n{data_files}\n"
            if "parquet" in formats and data_files
            else ""
        )
        + "---\n"
    )
    dropped = ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in release.dropped.items())
    shards = "\n".join(f"| {s} | {n} | {release.pass_rates.get(s, 0):.1%} |" for s, n in release.per_shard().items())
    contamination = (
        "checked against the configured benchmarks; flagged items are left out"
        if release.contamination_checked
        else "**not checked** (no benchmark was configured): check before training on it"
    )
    return f"""{header}
# Persona Hub synthetic data: {release.task}

Synthetic `{release.task}` items generated with the Persona Hub method (Chan et al., 2024, *Scaling Synthetic Data
Creation with 1,000,000,000 Personas*) by persona-hub-dagster: each item was written for one persona of a
deduplicated persona hub derived from a text corpus, then evaluated.

- **Items**: {total} ({counts["train"]} train, {counts["test"]} test; the split is a hash of `item_id`).
- **Considered**: {release.considered} generated items; left out: {dropped}.
- **Filters**: passed its evaluation (`eval/{release.task}`), not a near-duplicate of an earlier item of its shard
  (MinHash Jaccard ≥ 0.9 or embedding cosine ≥ 0.9), not contaminated. Contamination: {contamination}.
- **Models**: {", ".join(release.models) or "unknown"}. **Prompt versions**: {", ".join(release.prompt_versions)}.
- **Created**: {release.created_at:%Y-%m-%d %H:%M UTC}.

## Per shard

| shard | released items | evaluation pass rate |
|---|---:|---:|
{shards or "| – | 0 | – |"}

## Columns

`item_id` (content hash), `split`, `shard`, `persona_id`, `persona` (the persona it was written for), the lineage ids
(`source`, `text_id`: the source text, `parent_persona_id`, `root_persona_id`, `hop`), `prompting`, the task's own
columns, `messages` (the chat format trainers use), `model`, `prompt_version`. `chat/*.jsonl` holds `messages` alone.

## Known limits

Synthetic data inherits the biases and errors of the model that wrote it and of the corpus its personas came from;
an evaluation that passed is evidence, not proof, of correctness (see `eval/{release.task}` for how it was judged).
Personas are descriptions generated from public text and may echo it.
"""


def release_location(store: DeltaStore, task: str) -> str:
    """Where the release's files go: next to the tables, outside the Delta table of `release/<task>`."""
    return join_location(store.root, RELEASES_FOLDER, task)

"""Shard files: which files are shards, what their keys are, and the listing of a watched location.

A shard is one file (or object): `.jsonl`/`.ndjson`, `.parquet`, `.csv` or `.txt`, the text formats optionally
compressed (`.gz`, `.zst`, `.bz2`). Its key is derived from its path under the watched location
(`fineweb/part-00017.parquet` -> `fineweb-part-00017`), so keys are stable and readable in the UI.

A shard is of one of two kinds: `text` (web text, for Text-to-Persona) or `personas` (ready-made personas, one per
record: they become the shard's text personas as they are, with no LLM call). Under the watched location, files in
the personas folder (`personas/` by default) are persona shards; `persona-hub register-shard --kind personas` says so
for any file.

Which registered shard a listed file is: lib/shard_identity.py; the registry itself: lib/shards.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from persona_hub_dagster.lib import filesystems

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}
COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}
FORMATS = ("jsonl", "parquet", "csv", "txt")
KINDS = ("text", "personas")
DEFAULT_PERSONAS_FOLDER = "personas"
DEFAULT_PERSONA_COLUMN = "persona"
MAX_KEY_CHARS = 100
SHARD_KEY_RE = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_KEY_CHARS - 1}}}")  # the whole key (fullmatch)


class InvalidShard(ValueError):
    """A key or file that cannot be a shard."""


@dataclass(frozen=True)
class ShardFile:
    key: str
    uri: str
    format: str
    compression: str | None
    size_bytes: int
    modified_at: datetime | None
    kind: str = "text"
    content_digest: str | None = None  # content_digest(uri), where it was computed

    @property
    def fingerprint(self) -> str:
        """Changes when the file is replaced or rewritten; the sensor re-ingests a shard when it does."""
        stamp = int(self.modified_at.timestamp() * 1_000_000) if self.modified_at else 0
        return f"{self.size_bytes}:{stamp}"


def detect_format(name: str) -> tuple[str, str | None] | None:
    """('jsonl', 'gzip') for `x.jsonl.gz`; None when the name is not a shard format."""
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSION_BY_SUFFIX:
        compression = COMPRESSION_BY_SUFFIX[suffixes.pop()]
    if not suffixes or suffixes[-1] not in FORMAT_BY_SUFFIX:
        return None
    file_format = FORMAT_BY_SUFFIX[suffixes[-1]]
    if file_format == "parquet" and compression:
        return None  # Parquet compresses internally; a compressed Parquet file cannot be read by row group
    return file_format, compression


def shard_key_for(relative_path: str) -> str:
    """A readable, stable key from a path: lower case, format suffixes dropped, other characters folded to '-'."""
    path = PurePosixPath(relative_path)
    name = path.name
    detected = detect_format(name)
    if detected:
        n_suffixes = 2 if detected[1] else 1
        name = name.rsplit(".", n_suffixes)[0]
    raw = "/".join([*path.parent.parts, name]) if str(path.parent) != "." else name
    key = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-._")
    key = re.sub(r"-{2,}", "-", key)
    if len(key) > MAX_KEY_CHARS:
        digest = hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()
        key = key[: MAX_KEY_CHARS - 9].rstrip("-._") + "-" + digest
    return validate_shard_key(key or "shard")


def validate_shard_key(key: str) -> str:
    if not isinstance(key, str) or not SHARD_KEY_RE.fullmatch(key):
        raise InvalidShard(
            f"Invalid shard key {key!r}: use 1-{MAX_KEY_CHARS} characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return key


def shard_file(
    entry: filesystems.FileEntry, key: str | None = None, file_format: str | None = None, kind: str = "text"
) -> ShardFile:
    if kind not in KINDS:
        raise InvalidShard(f"Unknown shard kind {kind!r}; expected one of {KINDS}")
    detected = detect_format(entry.uri)
    if file_format is None:
        if detected is None:
            raise InvalidShard(
                f"{entry.uri}: not a shard format; expected one of "
                f"{', '.join(FORMAT_BY_SUFFIX)} (text formats optionally {', '.join(COMPRESSION_BY_SUFFIX)})"
            )
        file_format, compression = detected
    else:
        if file_format not in FORMATS:
            raise InvalidShard(f"Unknown format {file_format!r}; expected one of {FORMATS}")
        compression = detected[1] if detected else None
    return ShardFile(
        key=validate_shard_key(key) if key else shard_key_for(entry.relative_path),
        uri=entry.uri,
        format=file_format,
        compression=compression,
        size_bytes=entry.size_bytes,
        modified_at=entry.modified_at,
        kind=kind,
    )


@dataclass(frozen=True)
class Discovery:
    files: list[ShardFile]
    skipped: list[str]  # why other files under the location are not shards


def list_shard_candidates(location: str, personas_folder: str | None = DEFAULT_PERSONAS_FOLDER) -> Discovery:
    """Every file under `location` that can be a shard, in name order, each with the key its path derives to (not
    yet checked against the registry or the other files: plan_shards does that); those under its `personas_folder`
    (None: none) are persona shards. Hidden files and folders (., _) are ignored; files of other formats and empty
    files are skipped with a reason. Reads nothing but the listing."""
    personas_prefix = PurePosixPath(personas_folder.strip("/")).parts if personas_folder else None
    files: list[ShardFile] = []
    skipped: list[str] = []
    for entry in filesystems.list_files(location):  # sorted by relative path: the order keys are handed out in
        if any(part.startswith((".", "_")) for part in PurePosixPath(entry.relative_path).parts):
            continue
        if detect_format(entry.relative_path) is None:
            skipped.append(f"{entry.relative_path}: not a shard format")
            continue
        if entry.size_bytes == 0:
            skipped.append(f"{entry.relative_path}: empty file (still being written?)")
            continue
        parts = PurePosixPath(entry.relative_path).parts
        given = personas_prefix is not None and parts[: len(personas_prefix)] == personas_prefix
        files.append(shard_file(entry, kind="personas" if given else "text"))
    return Discovery(files=files, skipped=skipped)

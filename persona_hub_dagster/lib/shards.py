"""Text shards: which files are shards, what they are called, and the registry that remembers them.

A shard is one file (or object): `.jsonl`/`.ndjson`, `.parquet`, `.csv` or `.txt`, the text formats optionally
compressed (`.gz`, `.zst`, `.bz2`). Its key is derived from its path under the watched location
(`fineweb/part-00017.parquet` -> `fineweb-part-00017`), so keys are stable and readable in the UI.

A shard is of one of two kinds: `text` (web text, for Text-to-Persona) or `personas` (ready-made personas, one per
record: they become the shard's text personas as they are, with no LLM call). Under the watched location, files in
the personas folder (`personas/` by default) are persona shards; `persona-hub register-shard --kind personas` says so
for any file.

The registry is a small Delta table (`<storage root>/_meta/text_shards`) mapping each key to its file, format and
fingerprint (size and modification time). It lives with the data, not in Dagster's database, because every worker
of a cluster needs it and it must survive a rebuilt Dagster instance. It also records the order shards were
registered in (`registration_seq`), which cross-shard deduplication follows.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

import polars as pl
import pyarrow as pa

from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.storage import DeltaStore

FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}
COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}
FORMATS = ("jsonl", "parquet", "csv", "txt")
KINDS = ("text", "personas")
DEFAULT_PERSONAS_FOLDER = "personas"
DEFAULT_PERSONA_COLUMN = "persona"
MAX_KEY_CHARS = 100
SHARD_KEY_RE = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_KEY_CHARS - 1}}}")  # the whole key (fullmatch)
# Registration numbers come in blocks, one block per registration commit (see ShardRegistry._sequence_block).
SEQUENCE_BLOCK = 1_000_000


class InvalidShard(ValueError):
    """A key or file that cannot be a shard."""


class UnknownShard(LookupError):
    """A shard key that is not in the registry."""


class ShardConflict(ValueError):
    """A key that is already registered for another file."""


@dataclass(frozen=True)
class ShardFile:
    key: str
    uri: str
    format: str
    compression: str | None
    size_bytes: int
    modified_at: datetime | None
    kind: str = "text"

    @property
    def fingerprint(self) -> str:
        """Changes when the file is replaced or rewritten; the sensor re-ingests a shard when it does."""
        stamp = int(self.modified_at.timestamp() * 1_000_000) if self.modified_at else 0
        return f"{self.size_bytes}:{stamp}"


@dataclass(frozen=True)
class RegisteredShard:
    key: str
    source_uri: str
    format: str
    compression: str | None
    text_column: str | None
    fingerprint: str
    registration_seq: int
    registered_at: datetime
    registered_by: str
    kind: str = "text"

    @property
    def given_personas(self) -> bool:
        """Its records are personas already: Text-to-Persona takes them as they are."""
        return self.kind == "personas"

    def column(self, text_column: str) -> str:
        """The field holding each record's text (persona): its own, else `persona` for a persona shard, else the
        asset config's."""
        return self.text_column or (DEFAULT_PERSONA_COLUMN if self.given_personas else text_column)


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


def discover_shard_files(location: str, personas_folder: str | None = DEFAULT_PERSONAS_FOLDER) -> Discovery:
    """The shard files under `location`; those under its `personas_folder` (None: none) are persona shards. Hidden
    files and folders (., _) are ignored; files of other formats and files whose key collides with an earlier file's
    are skipped with a reason."""
    personas_prefix = PurePosixPath(personas_folder.strip("/")).parts if personas_folder else None
    files: list[ShardFile] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for entry in filesystems.list_files(location):
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
        shard = shard_file(entry, kind="personas" if given else "text")
        if shard.key in seen:
            skipped.append(f"{entry.relative_path}: key {shard.key!r} already taken by {seen[shard.key]}")
            continue
        seen[shard.key] = entry.relative_path
        files.append(shard)
    return Discovery(files=files, skipped=skipped)


REGISTRY_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("source_uri", pa.string()),
        ("format", pa.string()),
        ("compression", pa.string()),
        ("text_column", pa.string()),
        ("size_bytes", pa.int64()),
        ("modified_at", pa.timestamp("us", tz="UTC")),
        ("fingerprint", pa.string()),
        ("registration_seq", pa.int64()),
        ("registered_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
        ("registered_by", pa.string()),
        ("kind", pa.string()),  # null in registries written before shard kinds: text
    ]
)


class ShardRegistry:
    """The shard registry table under the storage root."""

    TABLE = tables.SHARD_REGISTRY
    COMPACT_AFTER_FILES = 64

    def __init__(self, store: DeltaStore):
        self.store = store

    def frame(self) -> pl.DataFrame:
        if not self.store.exists(self.TABLE):
            return pl.from_arrow(REGISTRY_SCHEMA.empty_table())
        frame = self.store.read(self.TABLE)
        if "kind" not in frame.columns:
            frame = frame.with_columns(kind=pl.lit(None, pl.String))
        return frame.with_columns(pl.col("kind").fill_null("text")).sort("registration_seq", "shard")

    def _sequence_block(self, keys: Sequence[str], registered_by: str) -> int:
        """The first of len(keys) registration numbers that no concurrent registration can get: the Delta version
        of this registration's own commit to the registration log, times SEQUENCE_BLOCK. Versions are assigned by
        the commit protocol (an atomic rename locally, a conditional put on S3), so two registrations never share
        one, and their order is the order in which they committed."""
        if len(keys) >= SEQUENCE_BLOCK:
            raise InvalidShard(f"At most {SEQUENCE_BLOCK - 1} shards per registration")
        token = uuid.uuid4().hex
        entry = pl.DataFrame(
            {"shard": [token], "keys": [list(keys)], "registered_by": [registered_by], "at": [datetime.now(UTC)]}
        )
        write = self.store.write_partitions(
            tables.SHARD_REGISTRATIONS, entry, partitions=[token], physically_partitioned=False
        )
        return (write.version + 1) * SEQUENCE_BLOCK

    def unregister(self, key: str) -> None:
        """Take the shard out of the registry (its rows in the other tables: unregister_shard())."""
        self.store.delete_partitions(self.TABLE, [key])

    def get(self, key: str) -> RegisteredShard:
        rows = self.frame().filter(pl.col("shard") == key)
        if rows.is_empty():
            raise UnknownShard(
                f"Shard {key!r} is not registered in {self.store.table_uri(self.TABLE)}. Put its file under the "
                f"watched source location for the sensor to find, or run `persona-hub register-shard PATH --key {key}`."
            )
        row = rows.row(0, named=True)
        return RegisteredShard(
            key=row["shard"],
            source_uri=row["source_uri"],
            format=row["format"],
            compression=row["compression"],
            text_column=row["text_column"],
            fingerprint=row["fingerprint"],
            registration_seq=row["registration_seq"],
            registered_at=row["registered_at"],
            registered_by=row["registered_by"],
            kind=row.get("kind") or "text",
        )

    def register(
        self,
        files: Sequence[ShardFile],
        *,
        registered_by: str,
        text_column: str | None = None,
        replace: bool = False,
    ) -> None:
        """Add or update shards in one commit. A key keeps its first registration time and sequence number when its
        file changes; a key already registered for a different file is a ShardConflict unless `replace`."""
        if not files:
            return
        keys = [f.key for f in files]
        if len(set(keys)) != len(keys):
            raise ShardConflict(f"The same key appears twice in one registration: {keys}")
        existing = {row["shard"]: row for row in self.frame().iter_rows(named=True)}
        if not replace:
            for f in files:
                old = existing.get(f.key)
                if old and old["source_uri"] != f.uri:
                    raise ShardConflict(
                        f"Shard {f.key!r} is already registered for {old['source_uri']}, not {f.uri}; "
                        "choose another key or replace it explicitly."
                    )
        now = datetime.now(UTC)
        new = [f.key for f in files if f.key not in existing]
        next_seq = self._sequence_block(new, registered_by) if new else 0
        rows = []
        for f in files:
            old = existing.get(f.key)
            if old:
                seq, registered_at = old["registration_seq"], old["registered_at"]
            else:
                seq, registered_at, next_seq = next_seq, now, next_seq + 1
            rows.append(
                {
                    "shard": f.key,
                    "source_uri": f.uri,
                    "format": f.format,
                    "compression": f.compression,
                    "text_column": text_column if text_column is not None else (old or {}).get("text_column"),
                    "size_bytes": f.size_bytes,
                    "modified_at": f.modified_at,
                    "fingerprint": f.fingerprint,
                    "registration_seq": seq,
                    "registered_at": registered_at,
                    "updated_at": now,
                    "registered_by": registered_by,
                    "kind": f.kind,
                }
            )
        self.store.write_partitions(
            self.TABLE,
            pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA),
            partitions=keys,
            physically_partitioned=False,  # one tiny row per shard: a folder per shard would be all overhead
        )
        self.store.compact(self.TABLE, min_files=self.COMPACT_AFTER_FILES)


def holds_given_personas(store: DeltaStore, shard: str | None) -> bool:
    """Whether the shard is registered as a shard of ready-made personas (its tables may also have been written
    without a registration, by tests and tools: those hold text)."""
    if shard is None:
        return False
    try:
        return ShardRegistry(store).get(shard).given_personas
    except UnknownShard:
        return False


def unregister_shard(store: DeltaStore, key: str, *, dry_run: bool = False) -> dict[str, int]:
    """Take a shard out of the platform: its rows in every table that has a `shard` column (its partition of every
    stage, its hub index entries, its report rows), its response-cache namespaces and its registry entry. Returns
    {table: rows} that were (with `dry_run`: would be) deleted, in one commit per table. The registration log keeps
    its history; Dagster's partition is removed by the caller (defs/ or the CLI)."""
    key = validate_shard_key(key)
    counts: dict[str, int] = {}
    for name in store.tables():
        if name == tables.SHARD_REGISTRATIONS.name:
            continue
        if name == tables.LLM_RESPONSES.name:
            namespaces = _cache_namespaces(store, key)
            rows = (
                store.scan(name).filter(pl.col("namespace").is_in(namespaces)).select(pl.len()).collect().item()
                if namespaces
                else 0
            )
            if rows and not dry_run:
                store.delete_partitions(name, namespaces, column="namespace")
        else:
            frame = store.scan(name)
            if "shard" not in frame.collect_schema().names():
                continue
            rows = frame.filter(pl.col("shard") == key).select(pl.len()).collect().item()
            if rows and not dry_run:
                store.delete_partitions(name, [key])
        if rows:
            counts[name] = rows
    return counts


def _cache_namespaces(store: DeltaStore, key: str) -> list[str]:
    """The response-cache namespaces of a shard: `<stage>.<shard>`, where stage names have no dots."""
    namespaces = store.scan(tables.LLM_RESPONSES).select("namespace").unique().collect()["namespace"].to_list()
    return sorted(n for n in namespaces if n.split(".", 1)[-1] == key and "." in n)

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
registered in (`registration_seq`), which cross-shard deduplication follows, and a digest of each file's content
(`content_digest`: its size, first and last MiB) by which a renamed, moved or copied file is recognized.

Under the watched location the registry is authoritative for the files it knows: a registered file keeps its
registered key, whatever its path now derives to. A key is derived only for a file the registry does not know, and
such a file is refused (with the reason in the sensor's log) when its key is already taken, when it is a copy of a
registered shard, or registered as the same shard again when it is a registered file moved (see plan_shards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
# A content digest reads this much of each end of a file: a tick that finds new files reads 2 MiB of each, once.
DIGEST_SAMPLE_BYTES = 1 << 20
DIGEST_THREADS = 8  # files digested at once (on an object store each read is a round trip)
# Registered files without a digest (registries written before digests) get one, this many per tick.
DIGEST_BACKFILL_PER_TICK = 64


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
    content_digest: str | None = None  # content_digest(uri), where it was computed

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
    content_digest: str | None = None  # None in registries written before content digests, until the sensor adds it

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


def content_digest(uri: str) -> str:
    """A cheap digest of a file's content, the same wherever the file lies (read through lib/filesystems, so on
    S3 too): blake2b over its size and its first and last DIGEST_SAMPLE_BYTES (the whole file when it is no longer
    than twice that). It recognizes a renamed, moved or copied file without reading it whole; two files of one size
    that differ only in their middle share it."""
    digest = hashlib.blake2b(digest_size=16)
    with filesystems.open_random_access(uri) as stream:
        size = stream.size()
        digest.update(size.to_bytes(8, "little"))
        if size <= 2 * DIGEST_SAMPLE_BYTES:
            digest.update(stream.read_at(size, 0) if size else b"")
        else:
            digest.update(stream.read_at(DIGEST_SAMPLE_BYTES, 0))
            digest.update(stream.read_at(DIGEST_SAMPLE_BYTES, size - DIGEST_SAMPLE_BYTES))
    return digest.hexdigest()


def _digests(uris: Sequence[str], digest: Callable[[str], str]) -> dict[str, str | OSError]:
    """{uri: digest, or the OSError that reading it raised (a file deleted since the listing, no permission)}."""

    def one(uri: str) -> str | OSError:
        try:
            return digest(uri)
        except OSError as exc:
            return exc

    if len(uris) <= 1:
        return {uri: one(uri) for uri in uris}
    with ThreadPoolExecutor(max_workers=min(DIGEST_THREADS, len(uris))) as pool:
        return dict(zip(uris, pool.map(one, uris), strict=True))


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


@dataclass(frozen=True)
class ShardPlan:
    """What a listing means against the registry: every shard file in it under its key, and what to do about it."""

    files: list[ShardFile]  # every shard in the listing, under its key (registered files: their registered key)
    new: list[ShardFile]  # not registered before: to register under the key their path derives to
    changed: list[ShardFile]  # registered, and their fingerprint changed: to register again (and ingest)
    moved: dict[str, str]  # key -> the uri it was registered for: its file moved to the one `files` names now
    digests: dict[str, str]  # key -> digest, for unchanged registered files that had none (older registries)
    skipped: list[str]  # every file of the listing that is not a shard, and why
    notes: list[str]  # what was recognized: moves
    complete: bool  # false: files are left for the next tick (digests still to add, files that could not be read)

    @property
    def to_register(self) -> list[ShardFile]:
        moved = [f for f in self.files if f.key in self.moved and f not in self.changed]
        return [*self.new, *self.changed, *moved]


def plan_shards(
    candidates: Sequence[ShardFile],
    registered: pl.DataFrame | None = None,
    *,
    digest: Callable[[str], str] | None = content_digest,
    file_exists: Callable[[str], bool] = filesystems.is_file,
    backfill_limit: int = DIGEST_BACKFILL_PER_TICK,
) -> ShardPlan:
    """Match a listing (list_shard_candidates) with the registry (ShardRegistry.frame()).

    - A listed file whose uri is registered is that shard, under its registered key, kind and format, whatever its
      path derives to and wherever it sorts; its fingerprint says whether it changed.
    - A file the registry does not know, taken in name order, is first compared by content digest with the
      registered shards (with their current content where it changed in this listing): the same content as a shard
      whose file is gone (not listed, not there) is that shard moved: it follows the file (same key, registration
      number and rows). The same content as a shard whose file is still there is a copy: refused, with the way to
      register it anyway. Otherwise it gets the key its path derives to, unless that key is taken (by a registered
      shard, wherever its file is, or by a file earlier in this listing): refused, the holder named.

    Digests are read only for files that are new to the registry or whose fingerprint changed (and, at most
    `backfill_limit` a call, for registered files without one), so an unchanged listing reads no file. `digest`
    None: no digests at all (a plain listing; moves and copies are not recognized)."""
    rows = list(registered.iter_rows(named=True)) if registered is not None else []
    by_key = {row["shard"]: row for row in rows}
    by_uri: dict[str, list[dict]] = {}
    for row in rows:
        by_uri.setdefault(row["source_uri"], []).append(row)
    uri_of = {row["shard"]: row["source_uri"] for row in rows}  # where each key's file is, as far as we know
    current = {row["shard"]: row.get("content_digest") for row in rows}  # each key's content, as far as we know
    listed = {f.uri for f in candidates}

    files: list[ShardFile] = []
    changed: list[ShardFile] = []
    without_digest: list[ShardFile] = []
    unknown: list[ShardFile] = []
    for candidate in candidates:
        if candidate.uri not in by_uri:
            unknown.append(candidate)
            continue
        for row in by_uri[candidate.uri]:  # one file registered under two keys (by hand) is both shards
            shard = _as_registered(candidate, row, row.get("content_digest"))
            files.append(shard)
            if row["fingerprint"] != shard.fingerprint:
                changed.append(shard)
            elif shard.content_digest is None:
                without_digest.append(shard)

    complete = True
    backfill = without_digest[:backfill_limit] if digest is not None else []
    if len(without_digest) > len(backfill) and digest is not None:
        complete = False
    read = _digests(list(dict.fromkeys(f.uri for f in [*changed, *backfill, *unknown])), digest) if digest else {}

    def digest_of(uri: str) -> str | None:
        value = read.get(uri)
        return value if isinstance(value, str) else None

    changed_keys = {f.key for f in changed}
    files = [dataclasses.replace(f, content_digest=digest_of(f.uri)) if f.key in changed_keys else f for f in files]
    changed = [f for f in files if f.key in changed_keys]
    current.update({f.key: f.content_digest for f in changed})
    digests = {f.key: d for f in backfill if (d := digest_of(f.uri))}
    current.update(digests)

    owners: dict[str, list[str]] = {}  # digest -> keys holding that content, in registration order
    for key, value in current.items():
        if value:
            owners.setdefault(value, []).append(key)

    new: list[ShardFile] = []
    moved: dict[str, str] = {}
    skipped: list[str] = []
    notes: list[str] = []
    for candidate in unknown:
        if digest is not None and isinstance(read.get(candidate.uri), OSError):
            skipped.append(f"{candidate.uri}: could not be read ({read[candidate.uri]}); tried again on the next tick")
            complete = False
            continue
        content = digest_of(candidate.uri)
        twins = owners.get(content, []) if content else []
        gone = next((k for k in twins if k not in moved and not _still_there(uri_of[k], listed, file_exists)), None)
        if gone is not None:
            row = by_key[gone]
            shard = _as_registered(candidate, row, content)
            moved[gone] = uri_of[gone]
            notes.append(
                f"{uri_of[gone]} moved to {shard.uri}: shard {gone!r} follows it (same key, same rows"
                + (")" if shard.fingerprint == row["fingerprint"] else "; ingested again: the file is newer)")
            )
            uri_of[gone] = shard.uri
            files.append(shard)
            if shard.fingerprint != row["fingerprint"]:
                changed.append(shard)
            continue
        if twins:
            holder = twins[0]
            skipped.append(
                f"{candidate.uri}: a copy of shard {holder!r} ({uri_of[holder]}): the same content; not registered. "
                f"To ingest it anyway, as another shard: `persona-hub register-shard {candidate.uri} --key OTHER`"
            )
            continue
        if candidate.key in uri_of:
            key, holder = candidate.key, uri_of[candidate.key]
            if key not in by_key:
                held = f"taken by {holder}, earlier in name order in this listing, which is shard {key!r}"
            elif _still_there(holder, listed, file_exists):
                held = f"taken by {holder}, registered as shard {key!r}, which stays the shard"
            else:
                held = (
                    f"registered for {holder}, which is gone: `persona-hub unregister-shard {key}` frees the key "
                    "(and deletes the shard's rows)"
                )
            skipped.append(
                f"{candidate.uri}: its key {key!r} is {held}; not registered. Rename "
                f"{PurePosixPath(candidate.uri).name}, or `persona-hub register-shard {candidate.uri} --key OTHER`"
            )
            continue
        shard = dataclasses.replace(candidate, content_digest=content)
        uri_of[shard.key] = shard.uri
        if content:
            owners.setdefault(content, []).append(shard.key)
        files.append(shard)
        new.append(shard)
    return ShardPlan(
        files=files,
        new=new,
        changed=changed,
        moved=moved,
        digests=digests,
        skipped=skipped,
        notes=notes,
        complete=complete,
    )


def _as_registered(candidate: ShardFile, row: Mapping, digest: str | None) -> ShardFile:
    """A listed file as the registered shard it is: the registry's key, kind, format and compression."""
    return dataclasses.replace(
        candidate,
        key=row["shard"],
        kind=row.get("kind") or "text",
        format=row["format"],
        compression=row["compression"],
        content_digest=digest,
    )


def _still_there(uri: str, listed: set[str], file_exists: Callable[[str], bool]) -> bool:
    """Whether a registered file is still where it was registered (in the listing, or outside the watched
    location); when that cannot be told, it is (a copy is refused, not a shard re-pointed)."""
    if uri in listed:
        return True
    try:
        return file_exists(uri)
    except (OSError, ValueError):
        return True


def alike_registered(registered: pl.DataFrame, shard: ShardFile) -> list[str]:
    """What registering `shard` by hand would duplicate: the same file registered under another key, or the same
    content (content_digest) as another key's file. Empty when nothing is alike."""
    alike = []
    for row in registered.iter_rows(named=True):
        if row["shard"] == shard.key:
            continue
        if row["source_uri"] == shard.uri:
            alike.append(f"{shard.uri} is already registered as shard {row['shard']!r}")
        elif shard.content_digest and row.get("content_digest") == shard.content_digest:
            line = f"{shard.uri} has the same content as shard {row['shard']!r} ({row['source_uri']})"
            if not _still_there(row["source_uri"], set(), filesystems.is_file):
                line += (
                    ", whose file is gone: if it moved here, `persona-hub register-shard "
                    f"{shard.uri} --key {row['shard']} --replace` points that shard at it"
                )
            alike.append(line)
    return alike


def discover_shard_files(location: str, personas_folder: str | None = DEFAULT_PERSONAS_FOLDER) -> Discovery:
    """The shard files under `location` on their own, without a registry: every candidate under the key its path
    derives to, the first in name order winning a key (the sensor matches the listing with the registry instead:
    list_shard_candidates, then plan_shards)."""
    listing = list_shard_candidates(location, personas_folder)
    plan = plan_shards(listing.files, None, digest=None)
    return Discovery(files=plan.files, skipped=[*listing.skipped, *plan.skipped])


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
        ("content_digest", pa.string()),  # null in registries written before content digests
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
        for column in ("kind", "content_digest"):
            if column not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(column))
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
            content_digest=row.get("content_digest"),
        )

    def register(
        self,
        files: Sequence[ShardFile],
        *,
        registered_by: str,
        text_column: str | None = None,
        replace: bool = False,
        moved_from: Mapping[str, str] | None = None,
    ) -> None:
        """Add or update shards in one commit. A key keeps its first registration time and sequence number when its
        file changes; a key already registered for a different file is a ShardConflict unless `replace`, or unless
        `moved_from` says the file moved from the uri it is registered for (a move the registry has not seen yet).
        A file without a content digest gets one here when it is new or changed (None when it cannot be read)."""
        if not files:
            return
        keys = [f.key for f in files]
        if len(set(keys)) != len(keys):
            raise ShardConflict(f"The same key appears twice in one registration: {keys}")
        existing = {row["shard"]: row for row in self.frame().iter_rows(named=True)}
        moved_from = moved_from or {}
        if not replace:
            for f in files:
                old = existing.get(f.key)
                if old and old["source_uri"] != f.uri and moved_from.get(f.key) != old["source_uri"]:
                    raise ShardConflict(
                        f"Shard {f.key!r} is already registered for {old['source_uri']}, not {f.uri}; "
                        "choose another key or replace it explicitly."
                    )
        now = datetime.now(UTC)
        new = [f.key for f in files if f.key not in existing]
        next_seq = self._sequence_block(new, registered_by) if new else 0
        # Digests the caller did not bring: an unchanged file keeps its own; the rest are read together, not per file.
        unchanged = {
            f.key: old.get("content_digest")
            for f in files
            if (old := existing.get(f.key)) and (old["source_uri"], old["fingerprint"]) == (f.uri, f.fingerprint)
        }
        to_read = [f.uri for f in files if f.content_digest is None and f.key not in unchanged]
        read = _digests(list(dict.fromkeys(to_read)), content_digest)
        rows = []
        for f in files:
            old = existing.get(f.key)
            digest = f.content_digest
            if digest is None:
                digest = unchanged[f.key] if f.key in unchanged else read[f.uri]
                digest = digest if isinstance(digest, str) else None
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
                    "content_digest": digest,
                }
            )
        self.store.write_partitions(
            self.TABLE,
            pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA),
            partitions=keys,
            physically_partitioned=False,  # one tiny row per shard: a folder per shard would be all overhead
        )
        self.store.compact(self.TABLE, min_files=self.COMPACT_AFTER_FILES)

    def record_digests(self, digests: Mapping[str, str]) -> None:
        """Add content digests to registered shards that have none (registries written before digests), changing
        nothing else in their rows."""
        if not digests:
            return
        frame = self.frame().filter(pl.col("shard").is_in(list(digests)) & pl.col("content_digest").is_null())
        if frame.is_empty():
            return
        frame = frame.with_columns(pl.col("shard").replace_strict(dict(digests)).alias("content_digest"))
        self.store.write_partitions(
            self.TABLE,
            frame.select(REGISTRY_SCHEMA.names).to_arrow().cast(REGISTRY_SCHEMA),
            partitions=frame["shard"].to_list(),
            physically_partitioned=False,
        )


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

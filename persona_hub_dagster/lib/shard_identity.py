"""Shard identity: which registered shard a listed file is, by its uri and by a digest of its content.

Under the watched location the registry is authoritative for the files it knows: a registered file keeps its
registered key, whatever its path now derives to. A key is derived only for a file the registry does not know, and
such a file is refused (with the reason in the sensor's log) when its key is already taken, when it is a copy of a
registered shard, or registered as the same shard again when it is a registered file moved (see plan_shards).
A file's content digest (its size, first and last MiB) is what recognizes a renamed, moved or copied file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import polars as pl

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.shard_files import DEFAULT_PERSONAS_FOLDER, Discovery, ShardFile, list_shard_candidates

# A content digest reads this much of each end of a file: a tick that finds new files reads 2 MiB of each, once.
DIGEST_SAMPLE_BYTES = 1 << 20
DIGEST_THREADS = 8  # files digested at once (on an object store each read is a round trip)
# Registered files without a digest (registries written before digests) get one, this many per tick.
DIGEST_BACKFILL_PER_TICK = 64


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


def read_digests(uris: Sequence[str], digest: Callable[[str], str]) -> dict[str, str | OSError]:
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
    read = read_digests(list(dict.fromkeys(f.uri for f in [*changed, *backfill, *unknown])), digest) if digest else {}

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

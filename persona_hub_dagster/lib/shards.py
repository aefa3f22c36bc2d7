"""The shard registry: the shards the platform knows, their files, kinds and the order they were registered in.

The registry is a small Delta table (`<storage root>/_meta/text_shards`) mapping each key to its file, format and
fingerprint (size and modification time). It lives with the data, not in Dagster's database, because every worker
of a cluster needs it and it must survive a rebuilt Dagster instance. It also records the order shards were
registered in (`registration_seq`), which cross-shard deduplication follows, and a digest of each file's content
(`content_digest`: its size, first and last MiB) by which a renamed, moved or copied file is recognized.

What a shard file is and its key: lib/shard_files.py; which registered shard a listed file is (moves, copies, taken
keys): lib/shard_identity.py. Taking a shard out of every table: unregister_shard, here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.shard_files import DEFAULT_PERSONA_COLUMN, InvalidShard, ShardFile, validate_shard_key
from persona_hub_dagster.lib.shard_identity import content_digest, read_digests
from persona_hub_dagster.lib.storage import DeltaStore

# Registration numbers come in blocks, one block per registration commit (see ShardRegistry._sequence_block).
SEQUENCE_BLOCK = 1_000_000


class UnknownShard(LookupError):
    """A shard key that is not in the registry."""


class ShardConflict(ValueError):
    """A key that is already registered for another file."""


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
        read = read_digests(list(dict.fromkeys(to_read)), content_digest)
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

"""Delta tables, one per asset, written one partition (shard) at a time.

The semantics every stage relies on, each proven in persona_hub_dagster_tests/test_storage.py, locally and on S3:

- A table lives at `<root>/<asset key path>`; the root is a local folder or an object-store URI (`s3://bucket/prefix`).
- `write_partitions` replaces exactly the given partitions in one Delta commit, using `mode="overwrite"` with a
  predicate on the partition column, also when the table does not exist yet. Re-running a shard replaces that shard
  and nothing else; a shard that now has no rows is emptied, not left stale.
- A row whose partition value is not among the partitions being written is an error, and nothing is committed.
- New columns merge into the table schema; older rows read back with nulls in them.
- Writers of different partitions can run at once and lose nothing. delta-rs rebases non-conflicting concurrent commits
  itself; what remains (the race to create the table, two writers changing the schema) raises `CommitFailedError`,
  which is retried with jittered backoff.
- A stream of record batches is spooled to a local Arrow IPC file while it is validated, so memory stays bounded for
  large shards and a retried commit can read the data again (lib/table_data.py).
- Tables are physically partitioned by `shard`: a shard overwrite only removes that shard's files, and a one-shard
  read only opens that shard's files.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.locations import default_storage_root, join_location, normalize_location
from persona_hub_dagster.lib.table_data import TableData, as_arrow, first_rows
from persona_hub_dagster.lib.tables import Table

PARTITION_COLUMN = "shard"
WRITE_ID_KEY = "persona_hub.write_id"

# delta-rs buffers a whole row group (default: 1M rows) and more per open file; with its defaults a 340 MB write
# peaked at 1.1 GB of extra memory here. Smaller row groups and files keep a write's memory flat as shards grow
# (measured: +173 MB for 673 MB of text; bench/RESULTS.md), at no cost to scans, which prune by partition anyway.
TARGET_FILE_BYTES = 64 * 2**20
WRITER_PROPERTIES = WriterProperties(max_row_group_size=16_384, compression="ZSTD")

# Verbatim values kept in rejects tables (a rejected record, a model's raw output) are cut at this many characters,
# with their full length and a hash beside them: one 10 MB record must not make a 10 MB table row.
RAW_LIMIT_CHARS = 64 * 1024
# Delta keeps min/max statistics only for columns that prune reads (ids, keys, numbers), never for long texts.
STATS_STRING_COLUMNS = frozenset({"shard", "namespace", "key", "task", "stage"})

TableRef = str | Sequence[str] | Table  # a name ("synthetic/math"), a key path, or the catalog's Table


class TableNotFound(LookupError):
    """Raised when reading a table that has never been written."""


@dataclass(frozen=True)
class TableWrite:
    """What one committed write did: enough for the Dagster materialization metadata."""

    uri: str
    version: int
    partitions: tuple[str, ...] | None  # None: the whole table was replaced
    rows_written: int
    table_rows: int
    schema: pa.Schema  # the table's schema after the write (merged)
    preview: pl.DataFrame  # the first rows written
    attempts: int = 1
    commit_metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class DeltaStore:
    """The project's Delta tables under one storage root.

    `storage_options` go to deltalake's object store (and polars). For S3 they may stay empty: the object store reads
    AWS_* variables (AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) from the environment.
    """

    root: str = field(default_factory=default_storage_root)
    storage_options: dict[str, str] = field(default_factory=dict)
    max_commit_attempts: int = 20
    spool_dir: str | None = None  # where streamed writes are spooled; None: the system temp folder

    def __post_init__(self) -> None:
        self.root = normalize_location(self.root)

    # ------------------------------------------------------------------ locations

    def table_uri(self, table: TableRef) -> str:
        """`<root>/<asset key path>`: `"raw_text"`, `("synthetic", "math")` or a catalog `Table`."""
        if isinstance(table, Table):
            table = table.path
        parts = table.split("/") if isinstance(table, str) else list(table)
        if not parts or any(not p or p in {".", ".."} for p in parts):
            raise ValueError(f"Invalid table name {table!r}")
        return join_location(self.root, *parts)

    def exists(self, table: TableRef) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(table), storage_options=self._options())

    def delta_table(self, table: TableRef, version: int | None = None) -> DeltaTable:
        uri = self.table_uri(table)
        try:
            return DeltaTable(uri, version=version, storage_options=self._options())
        except TableNotFoundError as exc:
            raise TableNotFound(f"No Delta table at {uri}: it has not been materialized yet.") from exc

    # ------------------------------------------------------------------ reads

    def scan(
        self,
        table: TableRef,
        partitions: Sequence[str] | None = None,
        *,
        version: int | None = None,
    ) -> pl.LazyFrame:
        """A lazy scan of the table: all partitions, or only `partitions` (pruned to their files)."""
        dt = self.delta_table(table, version=version)
        # Partition columns come out of a Delta scan at the end; put columns back in table-schema order.
        columns = [f.name for f in dt.schema().fields]
        frame = pl.scan_delta(dt).select(columns)
        if partitions is not None:
            frame = frame.filter(pl.col(PARTITION_COLUMN).is_in(list(partitions)))
        return frame

    def read(self, table: TableRef, partitions: Sequence[str] | None = None) -> pl.DataFrame:
        return self.scan(table, partitions).collect()

    def partitions(self, table: TableRef) -> list[str]:
        """The partition values present in the table (from the Delta log; no data files are read)."""
        if not self.exists(table):
            return []
        return sorted({p[PARTITION_COLUMN] for p in self.delta_table(table).partitions()})

    def row_count(self, table: TableRef, partitions: Sequence[str] | None = None) -> int:
        """Row count from the per-file statistics in the Delta log; no data files are read."""
        return _row_count(self.delta_table(table), partitions)

    # ------------------------------------------------------------------ writes

    def write_partitions(
        self,
        table: TableRef,
        data: TableData,
        *,
        partitions: Sequence[str] | None,
        schema: pa.Schema | None = None,
        commit_metadata: dict[str, str] | None = None,
        physically_partitioned: bool = True,
    ) -> TableWrite:
        """Atomically replace `partitions` of `table` with `data` (all of the table when `partitions` is None).

        `data` is a polars DataFrame, an Arrow table, or an iterable of record batches / DataFrames (streamed through
        a local spool file). `schema` is needed only to create a table from an empty stream.
        """
        uri = self.table_uri(table)
        wanted = tuple(dict.fromkeys(partitions)) if partitions is not None else None
        if wanted is not None and not wanted:
            raise ValueError("partitions must name at least one partition, or be None for the whole table")
        with as_arrow(data, schema, wanted, self.spool_dir, PARTITION_COLUMN) as (arrow_data, rows_written):
            write_id = uuid.uuid4().hex
            metadata = {**(commit_metadata or {}), WRITE_ID_KEY: write_id}
            dt, attempts = self._commit(uri, arrow_data, wanted, metadata, physically_partitioned)
            preview = pl.from_arrow(first_rows(arrow_data(), 5))
        assert isinstance(preview, pl.DataFrame)
        return TableWrite(
            uri=uri,
            version=_version_of_write(uri, write_id, self._options()),
            partitions=wanted,
            rows_written=rows_written,
            table_rows=_row_count(dt, None),
            schema=pa.schema(dt.schema().to_arrow()),
            preview=preview,
            attempts=attempts,
            commit_metadata=metadata,
        )

    def append(self, table: TableRef, data: pl.DataFrame | pa.Table, *, partition_by: Sequence[str] = ()) -> int:
        """Append rows in one commit (for append-only tables such as the LLM response cache); returns the version.
        Appends by concurrent writers do not conflict; a lost race to create the table is retried."""
        uri = self.table_uri(table)
        arrow = data.to_arrow() if isinstance(data, pl.DataFrame) else data
        self._with_commit_retries(
            lambda: write_deltalake(
                uri,
                arrow,
                mode="append",
                partition_by=list(partition_by) or None,
                schema_mode="merge",
                configuration=table_configuration(arrow.schema),
                storage_options=self._options(),
                writer_properties=WRITER_PROPERTIES,
            )
        )
        return DeltaTable(uri, storage_options=self._options()).version()

    def delete_partitions(self, table: TableRef, partitions: Sequence[str], *, column: str = PARTITION_COLUMN) -> int:
        """Delete the partitions' rows in one commit (retried on conflicts); returns the rows deleted."""
        if not partitions or not self.exists(table):
            return 0
        dt = self.delta_table(table)
        deleted: list[int] = []

        def delete() -> None:
            metrics = dt.delete(partition_predicate(partitions, column))
            deleted.append(int(metrics.get("num_deleted_rows", 0) if isinstance(metrics, dict) else 0))

        self._with_commit_retries(delete, refresh=dt.update_incremental)
        return deleted[-1]

    def tables(self) -> list[str]:
        """Every Delta table under the root, as `a/b` names (including the platform's _meta, _index, _cache)."""
        fs, base = filesystems.resolve(self.root)
        found = []
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name == "_delta_log":
                found.append(info.path[len(base) :].strip("/").removesuffix("/_delta_log"))
        return sorted(found)

    def compact(self, table: TableRef, *, min_files: int = 2) -> bool:
        """Merge small files once the table has `min_files` or more. Best effort: losing the commit race to another
        writer only means compaction waits for the next call."""
        dt = self.delta_table(table)
        if len(dt.file_uris()) < min_files:
            return False
        try:
            dt.optimize.compact()
        except CommitFailedError:
            return False
        return True

    def _commit(self, uri, arrow_data, partitions, metadata, physically_partitioned) -> tuple[DeltaTable, int]:
        """Commit with retries; returns the table, updated to include our commit, and the attempts it took."""
        # An already-open table saves delta-rs a second replay of the log, both for the write and for reading the
        # result afterwards (update_incremental reads only the newer commits).
        try:
            dt = DeltaTable(uri, storage_options=self._options())
        except TableNotFoundError:
            dt = None
        configuration = table_configuration(arrow_data().schema)  # a fresh stream: only its schema is read
        if dt is not None:
            _ensure_configuration(dt, configuration)

        def commit() -> None:
            write_deltalake(
                dt if dt is not None else uri,
                arrow_data(),
                mode="overwrite",
                configuration=configuration,
                predicate=partition_predicate(partitions) if partitions is not None else None,
                partition_by=[PARTITION_COLUMN] if physically_partitioned and partitions is not None else None,
                # Partition writes merge new columns in; a whole-table replace also replaces the schema.
                schema_mode="merge" if partitions is not None else "overwrite",
                storage_options=self._options(),
                target_file_size=TARGET_FILE_BYTES,
                writer_properties=WRITER_PROPERTIES,
                commit_properties=CommitProperties(custom_metadata=metadata),
            )

        attempts = self._with_commit_retries(commit, refresh=dt.update_incremental if dt is not None else None)
        if dt is None:
            dt = DeltaTable(uri, storage_options=self._options())
        else:
            dt.update_incremental()
        return dt, attempts

    def _with_commit_retries(self, commit: Callable[[], None], refresh: Callable[[], None] | None = None) -> int:
        """Run `commit` until it succeeds; returns the attempts it took. Only CommitFailedError (a lost race with
        another writer) is retried, with full jitter so that racing writers spread out."""
        for attempt in range(1, self.max_commit_attempts + 1):
            try:
                commit()
                return attempt
            except CommitFailedError:
                if attempt == self.max_commit_attempts:
                    raise
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                if refresh is not None:
                    refresh()
        raise AssertionError("unreachable")

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None


def capped(frame: pl.DataFrame, column: str, limit: int = RAW_LIMIT_CHARS) -> pl.DataFrame:
    """`column` cut at `limit` characters, with `<column>_chars` (its full length) and `<column>_hash` (the content
    hash of the full value, where it was cut) beside it."""
    from persona_hub_dagster.lib.ids import content_id

    full = pl.col(column)
    long = full.str.len_chars() > limit
    return frame.with_columns(
        pl.when(long).then(full.str.slice(0, limit)).otherwise(full).alias(column),
        full.str.len_chars().cast(pl.Int64).alias(f"{column}_chars"),
        pl.when(long).then(full.map_elements(content_id, return_dtype=pl.String)).alias(f"{column}_hash"),
    )


def table_configuration(schema: pa.Schema) -> dict[str, str]:
    """Table properties set when a table is created: statistics only for `stats_columns`."""
    columns = stats_columns(schema)
    if not columns:
        return {"delta.dataSkippingNumIndexedCols": "0"}
    return {"delta.dataSkippingStatsColumns": ",".join(columns)}


def _ensure_configuration(dt: DeltaTable, configuration: dict[str, str]) -> None:
    """Tables created before statistics were limited get the property once (later writes follow it)."""
    current = dt.metadata().configuration
    if "delta.dataSkippingStatsColumns" in current or "delta.dataSkippingNumIndexedCols" in current:
        return
    with contextlib.suppress(CommitFailedError):  # another writer set it first
        dt.alter.set_table_properties(configuration, raise_if_not_exists=False)


def stats_columns(schema: pa.Schema) -> list[str]:
    """The columns worth min/max statistics: numbers, booleans, times, and the id/key strings reads filter on."""
    chosen = []
    for field_ in schema:
        kind = field_.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if field_.name in STATS_STRING_COLUMNS or field_.name.endswith("_id"):
                chosen.append(field_.name)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            chosen.append(field_.name)
        elif pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            chosen.append(field_.name)
    return chosen


def partition_predicate(partitions: Sequence[str], column: str = PARTITION_COLUMN) -> str:
    """A SQL predicate selecting the partitions, with quotes escaped."""
    quoted = ", ".join("'" + p.replace("'", "''") + "'" for p in partitions)
    if len(partitions) == 1:
        return f"{column} = {quoted}"
    return f"{column} IN ({quoted})"


def _row_count(dt: DeltaTable, partitions: Sequence[str] | None) -> int:
    actions = pa.table(dt.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    counts = actions.column("num_records")
    partition_field = f"partition.{PARTITION_COLUMN}"
    if partitions is not None and partition_field in actions.schema.names:
        mask = pc.is_in(actions.column(partition_field), value_set=pa.array(list(partitions)))
        counts = pc.filter(counts, mask)
    return int(pc.sum(counts).as_py() or 0)


def _version_of_write(uri: str, write_id: str, options: dict[str, str] | None = None) -> int:
    """The table version our commit became (other writers may have committed after it), from the log as it is now:
    the writer's own handle can number its commit wrongly when it lost the race to create the table."""
    for attempt in range(20):
        dt = DeltaTable(uri, storage_options=options)
        history = dt.history(limit=1000)
        versions = [int(c["version"]) for c in history]
        # While other writers are committing, a handle can number the entries of a half-read log wrongly (two
        # entries with one number, or -1): only a contiguous run ending at the handle's version is trusted.
        if versions == list(range(dt.version(), dt.version() - len(versions), -1)) and min(versions, default=0) >= 0:
            for commit, version in zip(history, versions, strict=True):
                if commit.get(WRITE_ID_KEY) == write_id:
                    return version
        time.sleep(0.01 * (attempt + 1))
    raise RuntimeError(f"Our commit {write_id} is not among the last 1000 versions of {uri}")

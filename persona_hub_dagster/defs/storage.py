"""Dagster's view of the Delta tables: a store resource and an IO manager, both thin over lib.storage.DeltaStore.

- `DeltaIOManager` is the default `io_manager`. An asset that returns a DataFrame has it written as the run's
  partition(s) of `<root>/<asset key path>`; a downstream asset's input is loaded as a lazy scan of exactly the
  upstream partitions Dagster maps to it (one shard, a range, or all of them for an unpartitioned summary).
- `DeltaStorageResource` is for assets that write more than a DataFrame can say: streamed shards, several tables
  in one step, cross-shard lookups. They write through `store()` and report with `table_write_metadata`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
from pydantic import Field

from persona_hub_dagster.lib.locations import default_storage_root
from persona_hub_dagster.lib.stage import Markdown
from persona_hub_dagster.lib.storage import DeltaStore, TableWrite
from persona_hub_dagster.lib.tables import Table

PREVIEW_CELL_CHARS = 80


class DeltaStorageResource(dg.ConfigurableResource):
    """Where the Delta tables live: a local folder or an `s3://bucket/prefix` URI."""

    root: str = Field(
        default_factory=default_storage_root,
        description="Storage root; default $PERSONA_HUB_STORAGE, else .persona_hub/delta in the project folder.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="deltalake object-store options. AWS_* environment variables are read without listing them here.",
    )

    def store(self) -> DeltaStore:
        return DeltaStore(root=self.root, storage_options=dict(self.storage_options))


class DeltaIOManager(dg.ConfigurableIOManager):
    """Writes each asset partition atomically to its Delta table and loads upstream partitions as polars frames."""

    storage: dg.ResourceDependency[DeltaStorageResource]

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            raise dg.Failure(
                f"Asset {context.asset_key.to_user_string()} returned None; return a polars DataFrame "
                "(or yield MaterializeResult after writing through DeltaStorageResource)."
            )
        if isinstance(obj, pl.LazyFrame):
            obj = obj.collect(engine="streaming")
        if not isinstance(obj, pl.DataFrame | pa.Table):
            raise dg.Failure(f"DeltaIOManager stores polars/Arrow tables, not {type(obj).__name__}.")
        partitions = context.asset_partition_keys if context.has_asset_partitions else None
        write = self.storage.store().write_partitions(
            context.asset_key.path,
            obj,
            partitions=partitions,
            commit_metadata=commit_metadata(context.run_id, context.asset_key),
        )
        context.add_output_metadata(table_write_metadata(write))

    def load_input(self, context: dg.InputContext) -> pl.LazyFrame | pl.DataFrame:
        upstream = context.upstream_output
        asset_key = upstream.asset_key if upstream is not None else context.asset_key
        partitions = context.asset_partition_keys if context.has_asset_partitions else None
        frame = self.storage.store().scan(asset_key.path, partitions)
        if context.dagster_type.typing_type is pl.DataFrame:
            return frame.collect()
        return frame


def commit_metadata(run_id: str, asset_key: dg.AssetKey) -> dict[str, str]:
    """Recorded in the Delta commit itself, so the table's history names the run that wrote each version."""
    return {"dagster.run_id": run_id, "dagster.asset_key": asset_key.to_user_string()}


def table_write_metadata(
    write: TableWrite, lineage: Mapping[str, Sequence[tuple[Table, str]]] | None = None
) -> dict[str, dg.MetadataValue]:
    """Materialization metadata for one committed write: counts, schema, where the table is, and a preview.

    `lineage` ({column: [(upstream table, its column)]}) becomes `dagster/column_lineage`, one edge per upstream
    column, and also each column's description in the schema ("from text_personas.persona_id"): the open-source UI
    draws no column lineage view (a Dagster+ feature) but shows the descriptions in the asset's Columns table."""
    sources = {column: lineage[column] for column in write.schema.names if column in lineage} if lineage else {}
    partition_rows = write.rows_written
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(write.table_rows),
        "dagster/partition_row_count": dg.MetadataValue.int(partition_rows),
        "dagster/column_schema": dg.MetadataValue.table_schema(column_schema(write.schema, sources)),
        "dagster/storage_kind": dg.MetadataValue.text("deltalake"),
        "dagster/table_name": dg.MetadataValue.text(write.uri),
        "delta/uri": dg.MetadataValue.path(write.uri),
        "delta/version": dg.MetadataValue.int(write.version),
        "delta/commit_attempts": dg.MetadataValue.int(write.attempts),
        "preview": dg.MetadataValue.md(markdown_preview(write.preview)),
    }
    if sources:
        metadata["dagster/column_lineage"] = dg.TableColumnLineage(
            deps_by_column={
                column: [dg.TableColumnDep(asset_key=dg.AssetKey(list(t.path)), column_name=c) for t, c in deps]
                for column, deps in sources.items()
            }
        )
    return metadata


def metadata_value(value: Any) -> dg.MetadataValue:
    """A plain value from lib (a count, a rate, a dict of counts, a name) as metadata the UI can show and plot."""
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    return dg.MetadataValue.json(value)


def column_schema(
    schema: pa.Schema, sources: Mapping[str, Sequence[tuple[Table, str]]] | None = None
) -> dg.TableSchema:
    """The table's columns; where `sources` names a column's upstream columns, they are its description."""

    def described(name: str) -> str | None:
        if not sources or name not in sources:
            return None
        return "from " + ", ".join(f"{table.name}.{column}" for table, column in sources[name])

    return dg.TableSchema(
        columns=[dg.TableColumn(name=f.name, type=str(f.type), description=described(f.name)) for f in schema]
    )


def markdown_preview(frame: pl.DataFrame, max_rows: int = 5) -> str:
    """A small markdown table; long cells are cut so the UI stays readable."""
    if frame.is_empty():
        return "_no rows_"
    shown = frame.head(max_rows).with_columns(
        pl.col(pl.String).str.replace_all(r"\s+", " ").str.slice(0, PREVIEW_CELL_CHARS).str.replace_all(r"\|", r"\|")
    )
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    rows = ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in shown.iter_rows()]
    return "\n".join([header, rule, *rows])

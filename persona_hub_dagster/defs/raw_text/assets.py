"""raw_text and raw_text_rejects: one text shard, cleaned, deduplicated and accounted for, in two Delta tables."""

import json

import dagster as dg
import polars as pl

from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import asset_key, overrides_version, reported, settings_config, stage_specs
from persona_hub_dagster.defs.storage import (
    DeltaStorageResource,
    column_schema,
    commit_metadata,
    table_write_metadata,
)
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.corpus.cleaning import CLEANING_VERSION
from persona_hub_dagster.lib.corpus.ingest import RAW_TEXT_SCHEMA, REJECTS_SCHEMA, IngestSettings, ShardIngest
from persona_hub_dagster.lib.corpus.readers import SourceFileError
from persona_hub_dagster.lib.shards import ShardRegistry, UnknownShard

RAW_TEXT, RAW_TEXT_REJECTS = asset_key(tables.RAW_TEXT), asset_key(tables.RAW_TEXT_REJECTS)


INGEST_OP = "ingest_raw_text"
RawTextConfig = settings_config(IngestSettings, "RawTextConfig", op=INGEST_OP)
# Cleaning changes (and a settings file's values for the op) mark both tables stale.
CODE_VERSION = f"cleaning-v{CLEANING_VERSION}" + overrides_version(INGEST_OP)


@dg.multi_asset(
    name=INGEST_OP,
    specs=stage_specs(
        tables.INGESTION,
        deps=[],
        group="ingestion",
        code_version=CODE_VERSION,
        metadata={
            tables.RAW_TEXT: {"dagster/column_schema": column_schema(RAW_TEXT_SCHEMA)},
            tables.RAW_TEXT_REJECTS: {"dagster/column_schema": column_schema(REJECTS_SCHEMA)},
        },
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "text_ids_unique",
            asset=RAW_TEXT,
            blocking=True,
            description="Re-reads the written shard: every text_id occurs once (lineage joins depend on it).",
        ),
        dg.AssetCheckSpec(
            "reject_rate",
            asset=RAW_TEXT,
            description="Warns when a larger share of the shard's records was rejected than max_reject_rate.",
        ),
        dg.AssetCheckSpec(
            "has_records",
            asset=RAW_TEXT,
            description="Warns when the shard's file holds no record at all (an empty or truncated upload).",
        ),
    ],
    partitions_def=text_shards,
    can_subset=True,  # both tables are always written (see `reported`)
)
def ingest_raw_text(context: dg.AssetExecutionContext, config: RawTextConfig, storage: DeltaStorageResource):
    """Read the shard's file from the registry, clean it, and write both tables for this shard only."""
    shard, settings = context.partition_key, config.to_settings()
    store = storage.store()
    try:
        registered = ShardRegistry(store).get(shard)
    except UnknownShard as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    spec = settings.source(registered)
    ingest = ShardIngest(
        spec,
        shard=shard,
        run_id=context.run.run_id,
        options=settings.cleaning(registered.given_personas),
        batch_size=settings.batch_size,
    )
    what = "personas" if registered.given_personas else "texts"
    context.log.info(
        f"Ingesting the {what} of shard {shard!r} from {spec.uri} ({spec.format}, field {spec.text_column!r})"
    )

    provenance = commit_metadata(context.run.run_id, RAW_TEXT)
    try:
        texts = store.write_partitions(
            tables.RAW_TEXT, ingest.accepted(), partitions=[shard], schema=RAW_TEXT_SCHEMA, commit_metadata=provenance
        )
    except SourceFileError as exc:
        raise dg.Failure(f"Shard {shard!r} cannot be ingested: {exc}", allow_retries=False) from exc
    rejects = store.write_partitions(
        tables.RAW_TEXT_REJECTS, ingest.rejects(), partitions=[shard], commit_metadata=provenance
    )
    report = ingest.report
    by_reason = dict(sorted(report.rejected.items()))
    if report.records == 0:
        context.log.warning(
            f"Shard {shard!r}: {spec.uri} holds no record at all; raw_text is empty for it. If the file is still "
            "being written, re-materialize the shard when it is complete."
        )

    texts_result = dg.MaterializeResult(
        asset_key=RAW_TEXT,
        metadata={
            **table_write_metadata(texts),
            "source_uri": dg.MetadataValue.path(spec.uri),
            "shard_kind": dg.MetadataValue.text(registered.kind),
            "records_read": dg.MetadataValue.int(report.records),
            "empty_file": dg.MetadataValue.bool(report.records == 0),
            "rejected_rows": dg.MetadataValue.int(report.rejected_total),
            "duplicates_removed": dg.MetadataValue.int(report.rejected.get("duplicate", 0)),
            "rejected_by_reason": dg.MetadataValue.json(by_reason),
        },
    )
    rejects_result = dg.MaterializeResult(
        asset_key=RAW_TEXT_REJECTS,
        metadata={**table_write_metadata(rejects), "rejected_by_reason": dg.MetadataValue.json(by_reason)},
    )
    yield from reported(context, [texts_result, rejects_result])
    if RAW_TEXT not in context.selected_asset_keys:
        return  # its checks run with it

    counts = (
        store.scan(tables.RAW_TEXT, [shard])
        .select(rows=pl.len(), distinct=pl.col("text_id").n_unique())
        .collect()
        .row(0, named=True)
    )
    yield dg.AssetCheckResult(
        asset_key=RAW_TEXT,
        check_name="text_ids_unique",
        passed=counts["rows"] == counts["distinct"],
        metadata={"rows": counts["rows"], "distinct_text_ids": counts["distinct"]},
    )
    yield dg.AssetCheckResult(
        asset_key=RAW_TEXT,
        check_name="reject_rate",
        passed=report.reject_rate <= settings.max_reject_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "reject_rate": dg.MetadataValue.float(round(report.reject_rate, 4)),
            "max_reject_rate": dg.MetadataValue.float(settings.max_reject_rate),
            "rejected_by_reason": dg.MetadataValue.text(json.dumps(by_reason)),
        },
    )
    yield dg.AssetCheckResult(
        asset_key=RAW_TEXT,
        check_name="has_records",
        passed=report.records > 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"records_read": dg.MetadataValue.int(report.records), "source_uri": dg.MetadataValue.path(spec.uri)},
    )

"""eval/report: every evaluation metric by task and shard plus totals, with charts in the UI and an HTML report."""

import dagster as dg

from persona_hub_dagster.defs.automation import summarizes_inputs
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.stages import asset_key
from persona_hub_dagster.defs.storage import DeltaStorageResource, commit_metadata, metadata_value, table_write_metadata
from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.evaluation import report
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS


@dg.asset(
    key=asset_key(tables.EVAL_REPORT),
    deps=[asset_key(stage.table) for stage in EVALUATIONS.values()],
    description=tables.EVAL_REPORT.description,
    group_name="evaluation",
    kinds={"deltalake", "polars", "html"},
    code_version="report-v1",
    automation_condition=summarizes_inputs(),
)
def eval_report(context: dg.AssetExecutionContext, storage: DeltaStorageResource, embeddings: EmbeddingsResource):
    store = storage.store()
    built = report.build(store, embedder=embeddings.lazy_embedder(store), run_id=context.run.run_id)
    write = store.write_partitions(
        tables.EVAL_REPORT,
        built.table,
        partitions=None,
        commit_metadata=commit_metadata(context.run.run_id, asset_key(tables.EVAL_REPORT)),
    )
    location = filesystems.write_bytes(report.report_location(store), report.html(built).encode("utf-8"))
    context.log.info(f"eval/report: {built.totals().height} tasks; HTML at {location}")
    return dg.MaterializeResult(
        metadata={
            **table_write_metadata(write),
            "summary": dg.MetadataValue.md(report.markdown(built)),
            "html_report": dg.MetadataValue.path(location),
            **{key: metadata_value(value) for key, value in report.metadata_summary(built).items()},
        }
    )

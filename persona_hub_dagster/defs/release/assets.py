"""release/<task>: a training-ready dataset per task, across shards, in the Hugging Face datasets layout."""

import dagster as dg

from persona_hub_dagster.defs.stages import asset_key, settings_config
from persona_hub_dagster.defs.storage import (
    DeltaStorageResource,
    commit_metadata,
    metadata_value,
    table_write_metadata,
)
from persona_hub_dagster.lib import release, release_export, tables
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks import TASKS

ReleaseConfig = settings_config(release.ReleaseSettings, "ReleaseConfig")


def release_asset(task: SynthesisTask) -> dg.AssetsDefinition:
    table = tables.release(task.name)

    @dg.asset(
        key=asset_key(table),
        deps=[asset_key(t) for t in (task.table, tables.evaluation(task.name, "").table, tables.PERSONA_HUB)],
        description=table.description,
        group_name="release",
        kinds={"deltalake", "polars", "parquet"},
        code_version="release-v1",
    )
    def released(context: dg.AssetExecutionContext, config: ReleaseConfig, storage: DeltaStorageResource):  # type: ignore[valid-type]
        store = storage.store()
        built = release.build(store, task, config.to_settings())
        write = store.write_partitions(
            table, built.rows, partitions=None, commit_metadata=commit_metadata(context.run.run_id, asset_key(table))
        )
        location = release_export.release_location(store, task.name)
        written = release_export.write(built, location, storage_root=store.root)
        context.log.info(f"release/{task.name}: {built.counts()} items at {location}")
        return dg.MaterializeResult(
            metadata={
                **table_write_metadata(write, release.lineage(task)),
                "location": dg.MetadataValue.path(location),
                "dataset_card": dg.MetadataValue.md(release_export.dataset_card(built)),
                **{key: metadata_value(value) for key, value in release.metadata(built, written.files).items()},
            }
        )

    return released


release_assets = [release_asset(task) for task in TASKS.values()]

"""synthetic/<task>: one asset (and its rejects table) per entry of the task registry, built by one factory."""

import dagster as dg
from pydantic import Field

from persona_hub_dagster.defs.hub.assets import PERSONA_HUB
from persona_hub_dagster.defs.models import LLMResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import rate, stage_code_version, stage_specs, write_stage_tables
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib.dedup.hub import HUB_TABLE
from persona_hub_dagster.lib.generation import frame as rows_frame
from persona_hub_dagster.lib.generation import rejects_frame
from persona_hub_dagster.lib.synthesis.generate import SynthesisSettings, output_schema, synthesize
from persona_hub_dagster.lib.synthesis.tasks import TASKS, SynthesisTask

_DEFAULTS = SynthesisSettings()


class SynthesisConfig(dg.Config):
    personas: int | None = Field(
        default=_DEFAULTS.personas, description="Hub personas sampled from the shard; null: every one of them."
    )
    samples_per_persona: int = Field(default=1, description="Items asked per persona, each with its own seed.")
    seed: int = Field(default=0, description="Seeds the persona sample.")
    batch_size: int = Field(default=32, description="Requests per backend call and per response-cache commit.")

    def settings(self) -> SynthesisSettings:
        return SynthesisSettings(personas=self.personas, samples_per_persona=self.samples_per_persona, seed=self.seed)


def synthetic_key(task: str) -> dg.AssetKey:
    return dg.AssetKey(["synthetic", task])


def synthesis_asset(task: SynthesisTask) -> dg.AssetsDefinition:
    key, rejects_key = synthetic_key(task.name), dg.AssetKey(["synthetic", f"{task.name}_rejects"])
    version = stage_code_version([task.prompt().version], [task.sampling], sorted(task.columns))

    @dg.multi_asset(
        name=f"synthesize_{task.name}",
        specs=stage_specs(
            {
                key: f"{task.description} One row per item: item_id, the persona_id it was created for "
                f"(joins persona_hub), {', '.join(task.columns)}.",
                rejects_key: f"synthetic/{task.name} outputs that failed validation, verbatim, with the reason.",
            },
            deps=[PERSONA_HUB],
            group="synthesis",
            code_version=version,
        ),
        partitions_def=text_shards,
        can_subset=False,
    )
    def synthesize_task(
        context: dg.AssetExecutionContext, config: SynthesisConfig, storage: DeltaStorageResource, llm: LLMResource
    ):
        shard, store = context.partition_key, storage.store()
        hub = store.scan(HUB_TABLE, [shard]).select("persona_id", "persona").collect()
        client = llm.client(store, stage=f"synthetic-{task.name}", shard=shard, run_id=context.run.run_id)
        output = synthesize(
            task, hub, client, config.settings(), shard=shard, run_id=context.run.run_id, batch_size=config.batch_size
        )
        items = rows_frame(output.rows, output_schema(task))
        context.log.info(f"synthetic/{task.name} {shard}: {items.height} items, {len(output.rejects)} rejected")
        yield from write_stage_tables(
            context,
            store,
            shard,
            {key: items, rejects_key: rejects_frame(output.rejects)},
            usage=client.usage,
            metadata={
                key: {
                    "hub_personas": dg.MetadataValue.int(hub.height),
                    "rejection_rate": rate(len(output.rejects), len(output.rows) + len(output.rejects)),
                }
            },
        )

    return synthesize_task


synthesis_assets = [synthesis_asset(task) for task in TASKS.values()]

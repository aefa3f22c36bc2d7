"""The nightly Persona-to-Persona run: at 02:00, expand the shards whose text personas are new or changed since
their last expansion. What depends on the expansion (hub, synthesis, evaluation) follows by automation."""

import dagster as dg

from persona_hub_dagster.defs.automation import EXPANSION_ENV, SETTINGS
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import asset_key
from persona_hub_dagster.lib import tables

TEXT_PERSONAS, EXPANDED_PERSONAS = asset_key(tables.TEXT_PERSONAS), asset_key(tables.EXPANDED_PERSONAS)

expand_personas_nightly = dg.define_asset_job(
    "expand_personas_nightly",
    selection=dg.AssetSelection.assets(*map(asset_key, tables.PERSONA_TO_PERSONA.tables)),
    description="Persona-to-Persona for one shard; the hub and everything after it follow by automation.",
    tags=SETTINGS.llm_run_tags,
)


def shards_to_expand(instance: dg.DagsterInstance) -> dict[str, int]:
    """{shard: storage id of its latest text_personas materialization} for every shard whose text personas were
    materialized after its expanded personas (or that has never been expanded)."""
    materialized = dg.DagsterEventType.ASSET_MATERIALIZATION
    personas = instance.get_latest_storage_id_by_partition(TEXT_PERSONAS, materialized)
    expanded = instance.get_latest_storage_id_by_partition(EXPANDED_PERSONAS, materialized)
    registered = set(instance.get_dynamic_partitions(text_shards.name))
    return {
        shard: storage_id
        for shard, storage_id in sorted(personas.items())
        if shard in registered and storage_id > expanded.get(shard, -1)
    }


@dg.schedule(
    job=expand_personas_nightly,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    name="nightly_persona_expansion",
    description=(
        "Every night at 02:00 UTC: one run per shard whose text_personas changed since its last expansion "
        "(Persona-to-Persona is the expensive stage, so it runs off-hours on what is new)."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_persona_expansion(context: dg.ScheduleEvaluationContext):
    if SETTINGS.expansion == "off":
        return dg.SkipReason(f"Persona-to-Persona is off ({EXPANSION_ENV}=off).")
    due = shards_to_expand(context.instance)
    if not due:
        return dg.SkipReason("No shard has text personas newer than its expanded personas.")
    # The run key names the text_personas materialization: the same change is never expanded twice.
    return [dg.RunRequest(run_key=f"{shard}:{storage_id}", partition_key=shard) for shard, storage_id in due.items()]

"""Jobs over whole shards. Each run processes one shard (partition); shards run as separate runs."""

import dagster as dg

from persona_hub_dagster.defs.stages import asset_key
from persona_hub_dagster.lib import tables

DEMONSTRATIONS = dg.AssetSelection.assets(*map(asset_key, tables.DEMONSTRATIONS.tables))

land_text_shard = dg.define_asset_job(
    "land_text_shard",
    selection=dg.AssetSelection.assets(*map(asset_key, tables.INGESTION.tables)),
    description="What runs as soon as a shard lands (the shard sensor's target): ingestion into raw_text.",
)

process_text_shard = dg.define_asset_job(
    "process_text_shard",
    # `demonstrations` spans shards: it is derived once (prepare_demonstrations), not once per shard.
    selection=dg.AssetSelection.all() - DEMONSTRATIONS,
    description="Every stage for one shard, end to end (what `make demo` runs for the sample shard).",
)

prepare_demonstrations = dg.define_asset_job(
    "prepare_demonstrations",
    selection=DEMONSTRATIONS,
    description="Text-to-Persona over every task's demonstration pool, once: the personas persona_few_shot shows.",
)

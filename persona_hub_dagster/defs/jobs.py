"""Jobs over whole shards. Each run processes one shard (partition); shards run as separate runs."""

import dagster as dg

from persona_hub_dagster.defs.raw_text.assets import RAW_TEXT, RAW_TEXT_REJECTS

land_text_shard = dg.define_asset_job(
    "land_text_shard",
    selection=dg.AssetSelection.assets(RAW_TEXT, RAW_TEXT_REJECTS),
    description="What runs as soon as a shard lands (the shard sensor's target): ingestion into raw_text.",
)

process_text_shard = dg.define_asset_job(
    "process_text_shard",
    selection=dg.AssetSelection.all(),
    description="Every stage for one shard, end to end (what `make demo` runs for the sample shard).",
)

"""Jobs over whole shards. Each run processes one shard (partition); shards run as separate runs."""

import warnings

import dagster as dg

from persona_hub_dagster.defs.raw_text.assets import RAW_TEXT, RAW_TEXT_REJECTS

# process_text_shard mixes the hub's single-run backfill policy with the per-shard stages'. A run of the job is one
# shard, where the policies agree; Dagster still warns on every load, which only adds noise to every command.
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies")

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

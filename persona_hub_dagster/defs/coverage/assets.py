"""persona_clusters: the hub's coverage map, shard by shard (lib/coverage/), built by the stage factory."""

from persona_hub_dagster.defs.stages import stage_asset
from persona_hub_dagster.lib.coverage import persona_clusters

persona_clusters_asset = stage_asset(persona_clusters.STAGE, group="hub", kinds=["faiss"])

"""The persona_hub asset run for real on a temporary storage root, with candidates written here as Delta tables shaped
like text_personas / expanded_personas: test_hub and test_shard_lifecycle (through the `hub` fixture, conftest.py)."""

import dagster as dg
import polars as pl

from persona_hub_dagster.defs.hub.assets import build_persona_hub
from persona_hub_dagster.defs.hub.checks import hub_config_consistent, prefix_complete
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.shard_files import ShardFile
from persona_hub_dagster.lib.shards import ShardRegistry

NURSE = "A pediatric nurse who works night shifts at a large city hospital and volunteers at a free clinic."
SAILOR = "A retired sailor living in a coastal town who collects stamps from former colonies and restores boats."
CHEF = "A young chef who experiments with fermentation, runs a tiny restaurant and teaches cooking classes on Sundays."
TEACHER = "A high school chemistry teacher who coaches the robotics team and grades papers late into the night."
PILOT = "A cargo pilot who flies night routes over the Atlantic and studies meteorology in her free time."


def personas(shard: str, texts: list[str]) -> pl.DataFrame:
    """A shard's text_personas partition: the hub's candidates, one per text (text ids in text order)."""
    return pl.DataFrame(
        {
            "persona_id": [content_id(t) for t in texts],
            "persona": texts,
            "shard": shard,
            "text_id": [f"text-{shard}-{i:03d}" for i in range(len(texts))],
            "relation": "read",
            "model": "test",
            "prompt_version": "v0",
            "run_id": "r0",
        }
    )


def hub_runner(tmp_path, instance):
    """(store, register, run): a store on a temporary root, `register(*shards)`, and `run(partition_key, tags,
    run_config)` of the hub with its checks (the `hub` fixture in conftest.py)."""
    storage = DeltaStorageResource(root=str(tmp_path / "delta"))
    store = storage.store()
    resources = {
        "storage": storage,
        "io_manager": DeltaIOManager(storage=storage),
        "embeddings": EmbeddingsResource(),
    }

    def register(*shards: str):
        ShardRegistry(store).register(
            [ShardFile(s, f"/data/{s}.jsonl", "jsonl", None, 1, None) for s in shards], registered_by="test"
        )
        instance.add_dynamic_partitions(text_shards.name, list(shards))

    def run(partition_key=None, tags=None, run_config=None):
        return dg.materialize(
            [build_persona_hub, prefix_complete, hub_config_consistent],
            partition_key=partition_key,
            tags=tags,
            run_config=run_config,
            instance=instance,
            resources=resources,
            raise_on_error=False,  # prefix_complete is blocking: a failing check fails the run, as it should
        )

    return store, register, run


def check(result, name) -> dg.AssetCheckEvaluation:
    return next(c for c in result.get_asset_check_evaluations() if c.check_name == name)

"""Resources and the executor for every asset, configured from the environment (see README: Configuration)."""

import dagster as dg
from pydantic import Field

from persona_hub_dagster.defs.models import EmbeddingsResource, LLMResource
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib.locations import default_source_location


class ShardSourceResource(dg.ConfigurableResource):
    """The folder or object-store prefix the shard sensor watches for new text files."""

    location: str = Field(
        default_factory=default_source_location,
        description="Default $PERSONA_HUB_SOURCE, else corpus/ in the project folder.",
    )


@dg.definitions
def resources() -> dg.Definitions:
    storage = DeltaStorageResource()
    return dg.Definitions(
        resources={
            "storage": storage,
            "io_manager": DeltaIOManager(storage=storage),
            "shard_source": ShardSourceResource(),
            "llm": LLMResource(),
            "embeddings": EmbeddingsResource(),
        },
        # One shard's steps run in one process: on a small machine the multiprocess executor costs seconds per
        # step, and parallelism comes from running shards as separate runs (see README: Scaling).
        executor=dg.in_process_executor,
    )

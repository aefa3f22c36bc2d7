"""Jobs over whole shards. Each run processes one shard (partition); shards run as separate runs."""

import dagster as dg
from pydantic import Field

from persona_hub_dagster.defs.automation import SETTINGS
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import unregister_shards
from persona_hub_dagster.defs.stages import asset_key
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.coverage.search import search
from persona_hub_dagster.lib.lineage import format_trace, trace_any
from persona_hub_dagster.lib.shards import unregister_shard

DEMONSTRATIONS = dg.AssetSelection.assets(*map(asset_key, tables.DEMONSTRATIONS.tables))
RELEASES = dg.AssetSelection.key_prefixes(["release"])

land_text_shard = dg.define_asset_job(
    "land_text_shard",
    selection=dg.AssetSelection.assets(*map(asset_key, tables.INGESTION.tables)),
    description="What runs as soon as a shard lands (the shard sensor's target): ingestion into raw_text.",
)

process_text_shard = dg.define_asset_job(
    "process_text_shard",
    # `demonstrations` spans shards: it is derived once (prepare_demonstrations), not once per shard; a release is a
    # decision to publish, made across shards (release_datasets).
    selection=dg.AssetSelection.all() - DEMONSTRATIONS - RELEASES,
    description="Every stage for one shard, end to end (what `make demo` runs for the sample shard).",
    tags=SETTINGS.llm_run_tags,
)

release_datasets = dg.define_asset_job(
    "release_datasets",
    selection=RELEASES,
    description="Every task's training-ready release across shards (Hugging Face datasets layout under _releases/).",
)

prepare_demonstrations = dg.define_asset_job(
    "prepare_demonstrations",
    selection=DEMONSTRATIONS,
    description="Text-to-Persona over every task's demonstration pool, once: the personas persona_few_shot shows.",
)


class UnregisterConfig(dg.Config):
    shard: str = Field(description="The shard key to take out of every table, the registry and the partitions.")
    confirm: bool = Field(default=False, description="false: only report what would be deleted; true: delete it.")


@dg.op(description="Report (confirm: false) or delete (confirm: true) every row of a shard, and its partition.")
def unregister_shard_op(context: dg.OpExecutionContext, config: UnregisterConfig, storage: DeltaStorageResource):
    store = storage.store()
    planned = unregister_shard(store, config.shard, dry_run=True)
    if not config.confirm:
        context.log.info(f"Would delete from {len(planned)} tables: {planned}. Run again with confirm: true.")
        return
    deleted = unregister_shards(context.instance, store, config.shard)
    context.log.info(f"Unregistered shard {config.shard!r}: deleted {deleted}")
    context.add_output_metadata({"deleted_rows": dg.MetadataValue.json(deleted)})


@dg.job(
    name="unregister_shard",
    description="Take a shard out: its rows in every table (stages, hub index, report, response cache), its registry "
    "entry and its partition. Run with confirm: false first to see what would go. Later hub shards that were "
    "deduplicated against it are then flagged by prefix_complete for a rebuild.",
)
def unregister_shard_job():
    unregister_shard_op()


class TraceConfig(dg.Config):
    id: str = Field(description="An item_id (any task), persona_id or text_id.")


@dg.op(description="Follow an id back to its source text and record; the chain is in the log and the metadata.")
def trace_op(context: dg.OpExecutionContext, config: TraceConfig, storage: DeltaStorageResource):
    traced = trace_any(storage.store(), config.id)
    chain = format_trace(traced)
    context.log.info(f"Lineage of {config.id}:\n{chain}")
    context.add_output_metadata(
        {"lineage": dg.MetadataValue.md(f"```\n{chain}\n```"), "chain": dg.MetadataValue.json(traced.as_dict())}
    )


@dg.job(
    name="trace_lineage",
    description="Launch with an id in the config (Launchpad): the run's log and metadata show its chain: item -> "
    "evaluation -> persona -> parent personas -> source text, file and record (as `persona-hub trace`).",
)
def trace_lineage_job():
    trace_op()


class SearchConfig(dg.Config):
    query: str = Field(description="What to look for, e.g. 'healthcare workers' or 'people who build things by hand'.")
    k: int = Field(default=10, description="How many personas.")
    shard: str | None = Field(default=None, description="Only this shard's personas (default: the whole hub).")


@dg.op(description="The hub's personas nearest to the query: in the log and as a table in the metadata.")
def search_personas_op(
    context: dg.OpExecutionContext, config: SearchConfig, storage: DeltaStorageResource, embeddings: EmbeddingsResource
):
    store = storage.store()
    found = search(store, config.query, embeddings.lazy_embedder(store), k=config.k, shard=config.shard)
    lines = ["| rank | similarity | persona | cluster | shard | persona_id |", "|---:|---:|---|---|---|---|"]
    for row in found.iter_rows(named=True):
        persona = row["persona"].replace("|", "/").replace("\n", " ")
        cluster = f"{row['cluster']}: {row['cluster_label']}" if row.get("cluster") is not None else ""
        cells = [row["rank"], f"{row['similarity']:.3f}", persona, cluster, row["shard"], row["persona_id"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    context.log.info(f"{found.height} personas for {config.query!r}:\n" + "\n".join(lines[2:]))
    context.add_output_metadata(
        {"personas": dg.MetadataValue.md("\n".join(lines)), "results": dg.MetadataValue.int(found.height)}
    )


@dg.job(
    name="search_personas",
    description="Launch with a query in the config (Launchpad): the hub's nearest personas, with their similarity, "
    "cluster on the coverage map and persona ids (as `persona-hub personas search`).",
)
def search_personas_job():
    search_personas_op()

"""The shard sensor: new or changed files under the source location become shards and get ingested."""

import hashlib

import dagster as dg

from persona_hub_dagster.defs.automation import SETTINGS
from persona_hub_dagster.defs.jobs import land_text_shard
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.resources import ShardSourceResource
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib.shard_files import ShardFile, list_shard_candidates
from persona_hub_dagster.lib.shard_identity import plan_shards
from persona_hub_dagster.lib.shards import ShardRegistry


def listing_digest(files: list[ShardFile]) -> str:
    """The cursor: what the listing holds (keys are not in it: they depend on the registry, read only when the
    listing changed)."""
    lines = "\n".join(f"{f.uri}|{f.fingerprint}|{f.kind}" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:32]


@dg.sensor(
    name="text_shard_sensor",
    job=land_text_shard,
    minimum_interval_seconds=SETTINGS.tick_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the source location ($PERSONA_HUB_SOURCE, default corpus/) for .jsonl/.parquet/.csv/.txt files "
        "(under its personas/ folder: files of ready-made personas). A new file becomes a text_shards partition and "
        "is ingested; a changed file (size or modification time) is ingested again. A registered file keeps its key; "
        "a new file whose key is taken, or that is a copy of a shard, is skipped with the reason in the log; a "
        "shard's file renamed or moved (same content) takes the shard along. The cursor is a digest of the last "
        "listing, so an unchanged source costs one listing."
    ),
)
def text_shard_sensor(
    context: dg.SensorEvaluationContext, shard_source: ShardSourceResource, storage: DeltaStorageResource
):
    location = shard_source.location
    listing = list_shard_candidates(location, shard_source.personas_folder)
    for reason in listing.skipped:
        context.log.warning(f"Not a shard: {reason}")
    digest = listing_digest(listing.files)
    if context.cursor == digest:
        return dg.SkipReason(f"No new or changed shard files under {location}.")

    registry = ShardRegistry(storage.store())
    plan = plan_shards(listing.files, registry.frame())
    for reason in plan.skipped:
        context.log.warning(f"Skipped {reason}")
    for note in plan.notes:
        context.log.info(note)
    in_dagster = set(context.instance.get_dynamic_partitions(text_shards.name))

    registry.register(plan.to_register, registered_by="text_shard_sensor", moved_from=plan.moved)
    registry.record_digests(plan.digests)
    changed = {f.key for f in [*plan.new, *plan.changed]}
    to_run = [s for s in plan.files if s.key in changed or s.key not in in_dagster]
    new_partitions = [s.key for s in to_run if s.key not in in_dagster]
    context.log.info(
        f"{len(plan.files)} shard files under {location}: {len(new_partitions)} new, "
        f"{len(to_run) - len(new_partitions)} changed, {len(plan.moved)} followed to a new path, "
        f"{len(plan.skipped)} skipped"
    )
    # A plan left incomplete (digests still to add, a file that could not be read) leaves the cursor as it was:
    # the next tick looks at the folder again.
    cursor = digest if plan.complete else None
    if not to_run:
        return dg.SensorResult(skip_reason=f"No new or changed shard files under {location}.", cursor=cursor)
    return dg.SensorResult(
        # The run key names the file version: a retried tick never ingests the same version twice.
        run_requests=[dg.RunRequest(partition_key=s.key, run_key=f"{s.key}@{s.fingerprint}") for s in to_run],
        dynamic_partitions_requests=[text_shards.build_add_request(new_partitions)] if new_partitions else [],
        cursor=cursor,
    )

"""The shard sensor: new or changed files under the source location become shards and get ingested."""

import dataclasses
import hashlib

import dagster as dg

from persona_hub_dagster.defs.automation import SETTINGS
from persona_hub_dagster.defs.jobs import land_text_shard
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.resources import ShardSourceResource
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib.shards import ShardFile, ShardRegistry, discover_shard_files


def listing_digest(files: list[ShardFile]) -> str:
    lines = "\n".join(f"{f.key}|{f.uri}|{f.fingerprint}" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:32]


@dg.sensor(
    name="text_shard_sensor",
    job=land_text_shard,
    minimum_interval_seconds=SETTINGS.tick_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the source location ($PERSONA_HUB_SOURCE, default corpus/) for .jsonl/.parquet/.csv/.txt files "
        "(under its personas/ folder: files of ready-made personas). A new file becomes a text_shards partition and "
        "is ingested; a changed file (size or modification time) is ingested again. The cursor is a digest of the "
        "last listing, so an unchanged source costs one listing."
    ),
)
def text_shard_sensor(
    context: dg.SensorEvaluationContext, shard_source: ShardSourceResource, storage: DeltaStorageResource
):
    location = shard_source.location
    discovery = discover_shard_files(location, shard_source.personas_folder)
    for reason in discovery.skipped:
        context.log.warning(f"Not a shard: {reason}")
    digest = listing_digest(discovery.files)
    if context.cursor == digest:
        return dg.SkipReason(f"No new or changed shard files under {location}.")

    registry = ShardRegistry(storage.store())
    known = {row["shard"]: row for row in registry.frame().iter_rows(named=True)}
    in_dagster = set(context.instance.get_dynamic_partitions(text_shards.name))

    to_register, to_run = [], []
    for shard in discovery.files:
        old = known.get(shard.key)
        if old is not None and old["source_uri"] != shard.uri:
            context.log.warning(
                f"{shard.uri}: shard key {shard.key!r} is already registered for {old['source_uri']}; skipped. "
                "Rename the file or register it by hand with another --key."
            )
            continue
        if old is not None:
            # A registered shard keeps its kind (given with `register-shard --kind` or by the folder it was found in).
            shard = dataclasses.replace(shard, kind=old["kind"])
        changed = old is None or old["fingerprint"] != shard.fingerprint
        if changed:
            to_register.append(shard)
        if changed or shard.key not in in_dagster:
            to_run.append(shard)

    registry.register(to_register, registered_by="text_shard_sensor")
    new_partitions = [s.key for s in to_run if s.key not in in_dagster]
    context.log.info(
        f"{len(discovery.files)} shard files under {location}: {len(new_partitions)} new, "
        f"{len(to_run) - len(new_partitions)} changed"
    )
    if not to_run:
        return dg.SensorResult(skip_reason=f"No new or changed shard files under {location}.", cursor=digest)
    return dg.SensorResult(
        # The run key names the file version: a retried tick never ingests the same version twice.
        run_requests=[dg.RunRequest(partition_key=s.key, run_key=f"{s.key}@{s.fingerprint}") for s in to_run],
        dynamic_partitions_requests=[text_shards.build_add_request(new_partitions)] if new_partitions else [],
        cursor=digest,
    )

"""The one partitioning of every stage asset: one partition per text shard."""

from collections.abc import Sequence

import dagster as dg

from persona_hub_dagster.lib.shard_files import ShardFile
from persona_hub_dagster.lib.shards import ShardRegistry, unregister_shard
from persona_hub_dagster.lib.storage import DeltaStore

text_shards = dg.DynamicPartitionsDefinition(name="text_shards")


def register_shards(
    instance: dg.DagsterInstance,
    registry: ShardRegistry,
    files: Sequence[ShardFile],
    *,
    registered_by: str,
    text_column: str | None = None,
    replace: bool = False,
) -> list[str]:
    """Record the shards in the registry, then add their partitions to Dagster; returns the keys that are new to
    Dagster. The registry goes first so that a partition never exists without a file to read."""
    registry.register(files, registered_by=registered_by, text_column=text_column, replace=replace)
    new_keys = [f.key for f in files if not instance.has_dynamic_partition(text_shards.name, f.key)]
    if new_keys:
        instance.add_dynamic_partitions(text_shards.name, new_keys)
    return new_keys


def unregister_shards(instance: dg.DagsterInstance, store: DeltaStore, key: str) -> dict[str, int]:
    """Delete the shard's rows from every table and its registry entry, then its Dagster partition (in that order:
    a partition without rows is harmless, rows without a partition would be unreachable from the UI)."""
    deleted = unregister_shard(store, key)
    if instance.has_dynamic_partition(text_shards.name, key):
        instance.delete_dynamic_partition(text_shards.name, key)
    return deleted

"""Checks over the whole hub: was every shard deduplicated against the complete hub of the shards before it, and
with the current settings?"""

import dagster as dg

from persona_hub_dagster.defs.hub.assets import PERSONA_HUB, default_fingerprint
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup.hub import hub_shards
from persona_hub_dagster.lib.shards import ShardRegistry


@dg.asset_check(
    asset=PERSONA_HUB,
    name="prefix_complete",
    blocking=True,
    description=(
        "Fails when a hub shard was deduplicated while a shard registered before it had no hub yet (its personas "
        "may duplicate the earlier shard's), or when an earlier shard's hub was rebuilt or unregistered after it. "
        "Re-materialize the listed shards, in registration order (a single-run backfill does that)."
    ),
)
def prefix_complete(storage: DeltaStorageResource) -> dg.AssetCheckResult:
    store = storage.store()
    if not store.exists(tables.HUB_RUNS):
        return dg.AssetCheckResult(passed=True, metadata={"hub_shards": 0})
    runs = store.read(tables.HUB_RUNS)
    built_at = dict(zip(runs["shard"].to_list(), runs["deduplicated_at"].to_list(), strict=True))
    in_hub = set(hub_shards(store))
    registry = ShardRegistry(store).frame()
    order = registry.sort("registration_seq", "shard")["shard"].to_list()
    registered = set(order)
    incomplete, stale = {}, {}
    for row in runs.iter_rows(named=True):
        if row["shard"] not in in_hub:
            continue
        # Registered before it but without a hub when it was built; unregistered shards are no longer expected.
        missing = sorted((set(row["prefix_expected"] or []) & registered) - set(row["prefix_present"] or []))
        if missing:
            incomplete[row["shard"]] = missing
        # Compared with a shard that was rebuilt afterwards, or that has since been unregistered.
        rebuilt = [
            s
            for s in row["prefix_present"] or []
            if s not in registered or (built_at.get(s) and built_at[s] > row["deduplicated_at"])
        ]
        if rebuilt:
            stale[row["shard"]] = rebuilt
    to_rebuild = [s for s in order if s in incomplete or s in stale]
    return dg.AssetCheckResult(
        passed=not incomplete and not stale,
        metadata={
            "hub_shards": len(in_hub),
            "incomplete_prefix": dg.MetadataValue.json(incomplete),
            "rebuilt_prefix_since": dg.MetadataValue.json(stale),
            "rebuild_in_order": dg.MetadataValue.json(to_rebuild),
        },
    )


@dg.asset_check(
    asset=PERSONA_HUB,
    name="hub_config_consistent",
    description=(
        "Warns when hub shards were built with different dedup settings or embedding model than the current default "
        "(run-config overrides do not mark assets stale; this does)."
    ),
)
def hub_config_consistent(storage: DeltaStorageResource) -> dg.AssetCheckResult:
    store = storage.store()
    if not store.exists(tables.HUB_RUNS):
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN)
    runs = store.read(tables.HUB_RUNS)
    current = default_fingerprint()
    others = runs.filter(runs["hub_config"] != current)
    return dg.AssetCheckResult(
        passed=others.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "current_config": current,
            "shards_with_other_config": dg.MetadataValue.json(
                dict(zip(others["shard"].to_list(), others["hub_config"].to_list(), strict=True))
            ),
        },
    )

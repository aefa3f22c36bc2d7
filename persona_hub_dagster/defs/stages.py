"""What the LLM stage assets share: their code versions, and writing a stage's tables for one shard."""

from collections.abc import Iterator, Mapping, Sequence
from functools import cache

import dagster as dg
import polars as pl

from persona_hub_dagster.defs.models import usage_metadata
from persona_hub_dagster.defs.storage import commit_metadata, table_write_metadata
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.client import UsageStats
from persona_hub_dagster.lib.llm.settings import LLMSettings, model_identity
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.storage import DeltaStore


def stage_code_version(prompt_versions: Sequence[str], sampling: Sequence[SamplingParams], *extra: object) -> str:
    """`<prompt versions>-<hash of model and sampling>`: editing a template, switching the model or changing the
    default sampling marks the stage's materializations stale in the UI (and only this stage's)."""
    digest = content_id(repr((_configured_model(), [s.as_dict() for s in sampling], extra)))[:8]
    return f"{','.join(prompt_versions)}-{digest}"


@cache
def _configured_model() -> str:
    """The model identity from the environment, resolved once per code-location load (every stage asks)."""
    return model_identity(LLMSettings.from_env())


def stage_specs(
    tables: Mapping[dg.AssetKey, str],
    *,
    deps: Sequence[dg.AssetKey],
    group: str,
    code_version: str,
) -> list[dg.AssetSpec]:
    """The specs of one stage's tables (its main table first, then rejects, ...): {key: description}, all with the
    same upstream, group, storage kinds and code version, since one step writes them together."""
    return [
        dg.AssetSpec(
            key,
            deps=deps,
            description=description,
            group_name=group,
            kinds={"deltalake", "polars"},
            code_version=code_version,
        )
        for key, description in tables.items()
    ]


def write_stage_tables(
    context: dg.AssetExecutionContext,
    store: DeltaStore,
    shard: str,
    tables: Mapping[dg.AssetKey, pl.DataFrame],
    *,
    usage: UsageStats | None = None,
    metadata: Mapping[dg.AssetKey, Mapping[str, dg.MetadataValue]] | None = None,
) -> Iterator[dg.MaterializeResult]:
    """Write each table's partition for the shard (replacing exactly that shard), and report each materialization
    with its table metadata; the LLM usage goes on the first (the stage's main table)."""
    provenance = commit_metadata(context.run.run_id, next(iter(tables)))
    for index, (key, frame) in enumerate(tables.items()):
        write = store.write_partitions(key.path, frame, partitions=[shard], commit_metadata=provenance)
        extra = dict((metadata or {}).get(key, {}))
        if index == 0 and usage is not None:
            extra.update(usage_metadata(usage))
        yield dg.MaterializeResult(asset_key=key, metadata={**table_write_metadata(write), **extra})


def rate(part: int, whole: int) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(part / whole, 4) if whole else 0.0)

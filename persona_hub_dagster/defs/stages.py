"""The one factory for stage assets, and what every stage asset shares: asset keys from the catalog, run config
from a stage's settings, code versions, and writing a stage's tables for one shard.

A stage is declared in lib/ (`lib.stage.Stage`: the tables it writes and reads, its settings and `run`);
`stage_asset` turns that declaration into a multi-asset: one spec per table, the upstream partition loaded by the IO
manager, run config generated from the settings dataclass (its defaults and docs, said once in lib/), the
response-cached LLM client (for a stage that calls a model), and every table written atomically for the partition
with its metadata and the LLM usage.
"""

import dataclasses
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

import dagster as dg
import polars as pl
import pydantic
from pydantic import Field

from persona_hub_dagster.defs.automation import LARGE, RUN_SIZE_TAG, follows_inputs, llm_pool
from persona_hub_dagster.defs.models import usage_metadata
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import commit_metadata, metadata_value, table_write_metadata
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.estimate import Estimating, token_counter
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.client import UsageStats
from persona_hub_dagster.lib.llm.progress import Progress
from persona_hub_dagster.lib.llm.settings import LLMSettings, model_identity
from persona_hub_dagster.lib.settings import (
    STAGE_SETTINGS_ENV,
    StageSettingsError,
    deployment_defaults,
    deployment_overrides,
    settings_from,
)
from persona_hub_dagster.lib.shards import holds_given_personas
from persona_hub_dagster.lib.stage import Stage, StageCall, StageResult, empty_table_explanation
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import StageTables, Table

STORAGE_KINDS = frozenset({"deltalake", "polars"})


def asset_key(table: Table) -> dg.AssetKey:
    return dg.AssetKey(list(table.path))


@cache
def configured_llm(judge: bool = False) -> LLMSettings:
    """The generator's (or the judge's) settings from the environment, read once per code-location load."""
    return LLMSettings.from_env(judge=judge)


@cache
def configured_model(judge: bool = False) -> str:
    """The configured model's identity (every stage's code version names it)."""
    return model_identity(configured_llm(judge))


def stage_specs(
    written: StageTables,
    *,
    deps: Sequence[Table],
    group: str,
    code_version: str,
    kinds: Sequence[str] = (),
    automation_condition: dg.AutomationCondition | None = None,
    tags: Mapping[str, str] | None = None,
    metadata: Mapping[Table, Mapping[str, Any]] | None = None,
) -> list[dg.AssetSpec]:
    """The specs of one step's tables (main table first): all with the same upstream, group, storage kinds, code
    version, automation condition and tags, since one step writes them together. `kinds` go on the main table only;
    `metadata` by table. The one shape of every asset the project defines: the LLM stages' factory below, the hub
    and raw_text."""
    return [
        dg.AssetSpec(
            asset_key(table),
            deps=[asset_key(d) for d in deps],
            description=table.description,
            group_name=group,
            kinds=set(STORAGE_KINDS | set(kinds if index == 0 else ())),
            code_version=code_version,
            automation_condition=automation_condition,
            tags=tags,
            metadata=(metadata or {}).get(table),
        )
        for index, table in enumerate(written.tables)
    ]


class SettingsConfig(dg.Config):
    """Run config made from a lib settings dataclass (see `settings_config`)."""

    def to_settings(self) -> Any:
        return settings_from(self.settings_type(), self.model_dump(exclude=set(self.engine_fields())))

    @classmethod
    def settings_type(cls) -> type:
        raise NotImplementedError

    @classmethod
    def engine_fields(cls) -> tuple[str, ...]:
        return ()


class StageConfig(SettingsConfig):
    """What every stage takes besides its own settings."""

    batch_size: int = Field(default=32, description="Requests per backend call and per response-cache commit.")

    @classmethod
    def engine_fields(cls) -> tuple[str, ...]:
        return ("batch_size",)


@cache
def stage_overrides() -> dict[str, dict[str, Any]]:
    """The deployment's stage settings file (PERSONA_HUB_STAGE_SETTINGS), read once per code-location load."""
    return deployment_overrides()


# Every op whose settings a deployment file or a command line may set, with the settings it takes, and every LLM
# stage's declaration by op (filled as the code location loads).
_CONFIGURABLE_OPS: dict[str, set[str]] = {}
DECLARED_STAGES: dict[str, Stage] = {}


def stage_defaults(settings_type: type, op: str | None) -> Any:
    """A stage's default settings in this deployment: the dataclass's, with the settings file's values for `op`."""
    if op is None:
        return settings_type()
    _CONFIGURABLE_OPS.setdefault(op, set()).update(f.name for f in dataclasses.fields(settings_type))
    return deployment_defaults(settings_type, op, stage_overrides())


def overrides_version(op: str) -> str:
    """A suffix for the code version when the settings file sets anything for `op` (whichever settings the stage's
    own version covers), so that changing the file marks exactly the stages it names stale."""
    values = stage_overrides().get(op)
    return f"+settings-{content_id(repr(sorted(values.items())))[:8]}" if values else ""


def check_run_settings(ops: Mapping[str, Mapping[str, Any]], *, job_ops: Sequence[str] | None = None) -> None:
    """Settings given for one run (`persona-hub materialize --set/--settings`): every op must be a stage (of the job,
    when given) and every setting one of its own; a typo is an error that lists the valid names, not a no-op."""
    for op, values in ops.items():
        if op not in _CONFIGURABLE_OPS:
            raise StageSettingsError(f"no stage is named {op!r}; the stages are {', '.join(sorted(_CONFIGURABLE_OPS))}")
        if job_ops is not None and op not in job_ops:
            raise StageSettingsError(f"{op} is not a step of this job; its steps are {', '.join(sorted(job_ops))}")
        unknown = sorted(set(values) - _CONFIGURABLE_OPS[op])
        if unknown:
            raise StageSettingsError(
                f"{op} has no setting {', '.join(unknown)}; its settings are {', '.join(sorted(_CONFIGURABLE_OPS[op]))}"
            )


def check_stage_overrides() -> None:
    """After the code location loads: a settings file naming an op that does not exist is a typo, not a no-op."""
    unknown = sorted(set(stage_overrides()) - set(_CONFIGURABLE_OPS))
    if unknown:
        raise StageSettingsError(
            f"{STAGE_SETTINGS_ENV} names {', '.join(unknown)}, which no stage is; the stages are "
            f"{', '.join(sorted(_CONFIGURABLE_OPS))}"
        )


def settings_config(
    settings_type: type, name: str, base: type[SettingsConfig] = SettingsConfig, *, op: str | None = None
) -> type:
    """Run config with one field per setting: the type, default and doc of the settings dataclass's fields (the
    defaults as the deployment's settings file sets them for `op`)."""
    hints = typing.get_type_hints(settings_type)
    defaults = stage_defaults(settings_type, op)
    fields: dict[str, Any] = {}
    for setting in dataclasses.fields(settings_type):
        annotation, default = hints[setting.name], getattr(defaults, setting.name)
        if isinstance(default, tuple):  # Dagster config has lists, not tuples
            annotation, default = list[typing.get_args(annotation)[0]], list(default)
        fields[setting.name] = (annotation, Field(default=default, description=setting.metadata.get("doc")))
    config = pydantic.create_model(name, __base__=base, **fields)
    config.settings_type = classmethod(lambda cls: settings_type)
    return config


MODEL_RESOURCES = ("llm", "judge")


def stage_asset(
    declared: Stage, *, group: str, kinds: Sequence[str] = (), automated: bool = True
) -> dg.AssetsDefinition:
    """The multi-asset of a stage, from its declaration alone. `automated`: it follows the tables it reads
    (defs/automation.py); otherwise a schedule or a person runs it."""
    inputs = {_input_name(t): t for t in declared.reads}
    config_type = settings_config(
        declared.settings,
        "".join(part.title() for part in declared.op.split("_")) + "Config",
        base=StageConfig,
        op=declared.op,
    )
    _CONFIGURABLE_OPS[declared.op].update(StageConfig.engine_fields())
    DECLARED_STAGES[declared.op] = declared
    model_key = next((key for key in declared.resources if key in MODEL_RESOURCES), None)
    judge = model_key == "judge"

    @dg.multi_asset(
        name=declared.op,
        specs=stage_specs(
            declared.writes,
            deps=[*declared.reads, *declared.uses],
            group=group,
            code_version=declared.code_version(
                stage_defaults(declared.settings, declared.op), configured_model(judge=judge)
            )
            + overrides_version(declared.op),
            kinds=kinds,
            automation_condition=follows_inputs([asset_key(t) for t in declared.reads]) if automated else None,
            tags={RUN_SIZE_TAG: LARGE},
        ),
        pool=llm_pool(configured_llm(judge)) if model_key else None,
        ins={name: dg.AssetIn(asset_key(table)) for name, table in inputs.items()},
        partitions_def=text_shards if declared.partitioned else None,
        required_resource_keys={"storage", *declared.resources},
        check_specs=[
            dg.AssetCheckSpec(warning.name, asset=asset_key(declared.table), description=warning.description)
            for warning in declared.warnings
        ],
        can_subset=True,  # a selection may name some of the stage's tables; it writes them all (`reported`)
    )
    def materialize_stage(context: dg.AssetExecutionContext, config: config_type, **upstream: pl.LazyFrame):  # type: ignore[valid-type]
        resources = context.resources
        shard = context.partition_key if declared.partitioned else None
        store, run_id = resources.storage.store(), context.run.run_id
        model = getattr(resources, model_key) if model_key else None
        client = model.client(store, stage=declared.name, shard=shard or "", run_id=run_id) if model else None
        if client is not None:
            client.progress = Progress(f"{declared.name} {shard or ''}".strip(), report=context.log.info)
        _refuse_to_empty(declared, store, shard, upstream)
        call = StageCall(
            client,
            store,
            shard,
            run_id,
            config.batch_size,
            embedder=resources.embeddings.lazy_embedder(store) if "embeddings" in declared.resources else None,
            benchmarks=resources.benchmarks.load() if "benchmarks" in declared.resources else (),
        )
        settings = config.to_settings()
        result = declared.run({inputs[name]: frame for name, frame in upstream.items()}, call, settings)
        if client is not None:
            client.progress.finish()
        main = result.tables[declared.table]
        rejects = result.tables.get(declared.rejects) if declared.rejects else None
        if main.is_empty() and rejects is not None:
            result.metadata["empty_because"] = empty_table_explanation(rejects["reason"].to_list())
        context.log.info(
            f"{declared.name} {shard or ''}: {main.height} rows"
            + (f", {rejects.height} rejected" if rejects is not None else "")
        )
        usage = client.usage if client is not None else None
        if usage is not None and declared.estimate is not None:
            result.metadata.update(_estimated(declared, settings, store, shard, upstream, judge=judge))
        yield from reported(
            context,
            write_stage_tables(context, store, shard, declared.writes, result, usage=usage, lineage=declared.lineage),
        )
        yield from _warnings(context, declared, result)
        if client is not None and client.stopped_by_budget:
            raise dg.Failure(_budget_message(declared, shard, client, main.height), allow_retries=False)

    return materialize_stage


def _estimated(
    declared: Stage, settings: Any, store: DeltaStore, shard: str | None, upstream: Mapping, *, judge: bool
) -> dict[str, int]:
    """What `persona-hub estimate` would have said of this stage given the rows it actually read, shown beside the
    llm/* actuals, so the estimators' error is visible per run (bench/RESULTS.md measures it across corpora)."""
    texts = upstream.get(_input_name(tables.RAW_TEXT))
    rows = {t.name: upstream[_input_name(t)].select(pl.len()).collect().item() for t in declared.reads}
    if store.exists(tables.PERSONA_HUB) and shard is not None:
        rows.setdefault(tables.PERSONA_HUB.name, store.row_count(tables.PERSONA_HUB, [shard]))
    shard_estimate = Estimating(
        texts=texts.select("text_id", "text").collect() if texts is not None else pl.DataFrame(),
        count=token_counter(),
        model=configured_model(judge=judge),
        store=store,
        rows=rows,
        given_personas=holds_given_personas(store, shard),
        shard=shard,
    )
    estimate = declared.estimate(settings, shard_estimate)
    return {
        "estimate/calls": estimate.calls,
        "estimate/prompt_tokens": estimate.prompt_tokens,
        "estimate/completion_tokens": estimate.completion_tokens,
    }


def _warnings(context: dg.AssetExecutionContext, declared: Stage, result: StageResult) -> Iterator:
    """The stage's warning checks on its main table, from the result's metadata (those the run selected)."""
    for warning in declared.warnings:
        key = dg.AssetCheckKey(asset_key(declared.table), warning.name)
        if key not in context.selected_asset_check_keys:
            continue
        problem = warning.problem(result.metadata)
        yield dg.AssetCheckResult(
            asset_key=key.asset_key,
            check_name=warning.name,
            passed=problem is None,
            severity=dg.AssetCheckSeverity.WARN,
            description=problem,
        )


def _budget_message(declared: Stage, shard: str | None, client, rows: int) -> str:
    budget, usage = client.budget, client.usage
    return (
        f"{declared.name} {shard or ''} stopped at the run's token budget: the run's calls to this model spent "
        f"{budget.spent:,} of {budget.limit:,} tokens ({usage.calls} calls in this stage, {usage.cache_hits} answers "
        f"from the cache). It wrote the {rows} rows it has, and every answer is in the response cache. To go on, "
        "raise the budget (the llm resource's token_budget, or PERSONA_HUB_LLM_TOKEN_BUDGET; null for none) and "
        "materialize the shard again: the answered calls replay from the cache for free."
    )


def _refuse_to_empty(declared: Stage, store: DeltaStore, shard: str | None, upstream: dict) -> None:
    """A partition whose every input is empty would replace the stage's rows with none: when the stage's table holds
    rows for it, that is almost always an upstream accident (a truncated re-ingest, a failed stage), so stop."""
    if shard is None or not upstream or not store.exists(declared.table):
        return
    if any(frame.head(1).collect().height for frame in upstream.values()):
        return
    existing = store.row_count(declared.table, [shard])
    if existing:
        inputs = ", ".join(t.name for t in declared.reads)
        raise dg.Failure(
            f"{inputs} has no rows for shard {shard!r}, so {declared.name} would replace its {existing} rows of that "
            f"shard with none. Nothing was written. Re-materialize {inputs} for the shard first (or, if the shard "
            "is meant to be empty, unregister it: `persona-hub unregister-shard`).",
            allow_retries=False,
        )


def write_stage_tables(
    context: dg.AssetExecutionContext,
    store: DeltaStore,
    shard: str | None,
    written: StageTables,
    result: StageResult,
    *,
    usage: UsageStats | None = None,
    lineage: Mapping[str, Sequence[tuple[Table, str]]] | None = None,
) -> Iterator[dg.MaterializeResult]:
    """Write each table's partition for the shard (replacing exactly that shard; the whole table when the stage is
    unpartitioned), and report each materialization with its table metadata; the stage's own metadata and the LLM
    usage go on its main table, and so does its column lineage."""
    missing = [t.name for t in written.tables if t not in result.tables]
    if missing:
        raise ValueError(f"Stage {written.name} returned no frame for {missing}")
    provenance = commit_metadata(context.run.run_id, asset_key(written.table))
    for table in written.tables:
        write = store.write_partitions(
            table, result.tables[table], partitions=[shard] if shard is not None else None, commit_metadata=provenance
        )
        extra: dict[str, dg.MetadataValue] = {}
        if table == written.table:
            extra = {key: metadata_value(value) for key, value in result.metadata.items()}
            if usage is not None:
                extra.update(usage_metadata(usage))
        main_lineage = lineage if table == written.table else None
        yield dg.MaterializeResult(
            asset_key=asset_key(table), metadata={**table_write_metadata(write, main_lineage), **extra}
        )


def reported(
    context: dg.AssetExecutionContext, results: Iterable[dg.MaterializeResult]
) -> Iterator[dg.MaterializeResult]:
    """Every table a step wrote, reported as materialized, whichever of them the run selected.

    A stage's tables are written together in one step (its rows and its rejects come from the same calls), but a
    selection such as `dagster asset materialize --select '+persona_hub'` names persona_hub and its upstream tables,
    not their rejects or decisions tables. The stage assets accept such a subset (`can_subset=True`) and still write
    every table; the selected ones are the step's results, the others are recorded as materializations of the same
    run (runtime events), so no table changes without its materialization in the catalog."""
    for result in results:
        if result.asset_key in context.selected_asset_keys:
            yield result
            continue
        partitions = context.partition_keys if context.has_partition_key or context.has_partition_key_range else [None]
        for partition in partitions:
            context.log_event(
                dg.AssetMaterialization(asset_key=result.asset_key, partition=partition, metadata=result.metadata)
            )


def _input_name(table: Table) -> str:
    return "__".join(table.path)

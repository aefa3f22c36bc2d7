"""How a shard goes through every stage on its own: declarative automation, pools and the size of runs.

The lifecycle of a shard (docs/explanation/lifecycle.md draws it as a timeline):
1. A file lands under the source location: `text_shard_sensor` registers it and runs `raw_text` for it.
2. Every stage below follows its inputs (`follows_inputs`): a partition is materialized when it is new or when
   one of the tables it reads for the shard was updated since, once nothing it needs is missing or running. Tables a
   stage only consults (`uses`: the demonstration pools, the shard's hub for evaluations) must exist but do not
   trigger it, so refreshing a pool never re-pays a corpus by itself.
3. `expanded_personas` (Persona-to-Persona, the expensive stage) has no condition: the nightly schedule runs it,
   and the hub follows it (`PERSONA_HUB_EXPANSION=nightly`, the default). With `PERSONA_HUB_EXPANSION=off` nothing
   is expanded and the hub follows text_personas.
4. synthetic/<task> and eval/<task> follow the hub; eval/report follows every evaluation. Releases stay a decision
   (the release_datasets job).

`PERSONA_HUB_AUTOMATION=0` starts the automation sensors stopped (shards then go only as far as raw_text on their
own). A changed prompt, model or setting changes an asset's code version: the UI marks the asset stale, and nothing
re-runs unless `PERSONA_HUB_RERUN_ON_CODE_CHANGE=1`, because that re-pays the LLM calls of every shard.

Pools limit steps across all runs: `persona_hub` (the cross-shard dedup, always 1), `llm` (LLM stages against the
configured endpoint) and `gpu` (LLM stages of runs that start their own vLLM engine); the limits are the
instance's (infra/entrypoint.sh sets them from PERSONA_HUB_POOL_LIMITS). Runs of LLM stages carry the `ecs/cpu`
and `ecs/memory` tags with which EcsRunLauncher starts them on a larger task.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import dagster as dg

from persona_hub_dagster.lib.llm.settings import LLMSettings, env_count

AUTOMATION_ENV = "PERSONA_HUB_AUTOMATION"
EXPANSION_ENV = "PERSONA_HUB_EXPANSION"
RERUN_ENV = "PERSONA_HUB_RERUN_ON_CODE_CHANGE"
TICK_ENV = "PERSONA_HUB_TICK_SECONDS"
LLM_RUN_CPU_ENV, LLM_RUN_MEMORY_ENV = "PERSONA_HUB_LLM_RUN_CPU", "PERSONA_HUB_LLM_RUN_MEMORY"
EXPANSION_MODES = ("nightly", "off")

HUB_POOL, LLM_POOL, GPU_POOL = "persona_hub", "llm", "gpu"
# The tag of the tables the stage factory builds (the LLM stages, the evaluations): their runs get large tasks.
RUN_SIZE_TAG, LARGE = "persona_hub/run_size", "large"


@dataclasses.dataclass(frozen=True)
class AutomationSettings:
    """What the deployment decides about automation, from the environment (read once when the code loads)."""

    automation: bool = True
    expansion: str = "nightly"
    rerun_on_code_change: bool = False
    tick_seconds: int = 30
    llm_run_cpu: int = 4096
    llm_run_memory: int = 16384

    @classmethod
    def from_env(cls) -> AutomationSettings:
        expansion = os.environ.get(EXPANSION_ENV, "").strip().lower() or cls.expansion
        if expansion not in EXPANSION_MODES:
            raise ValueError(f"{EXPANSION_ENV} must be one of {', '.join(EXPANSION_MODES)}; it is {expansion!r}")
        return cls(
            automation=_env_flag(AUTOMATION_ENV, cls.automation),
            expansion=expansion,
            rerun_on_code_change=_env_flag(RERUN_ENV, cls.rerun_on_code_change),
            tick_seconds=env_count(TICK_ENV, cls.tick_seconds),
            llm_run_cpu=env_count(LLM_RUN_CPU_ENV, cls.llm_run_cpu),
            llm_run_memory=env_count(LLM_RUN_MEMORY_ENV, cls.llm_run_memory),
        )

    @property
    def llm_run_tags(self) -> dict[str, str]:
        """Run tags of runs of the LLM stages and evaluations: EcsRunLauncher gives them a task of this size
        (Fargate's valid cpu/memory pairs apply)."""
        return {"ecs/cpu": str(self.llm_run_cpu), "ecs/memory": str(self.llm_run_memory)}


def _env_flag(variable: str, default: bool) -> bool:
    value = os.environ.get(variable, "").strip().lower()
    if value in ("1", "true", "on"):
        return True
    if value in ("0", "false", "off"):
        return False
    if value:
        raise ValueError(f"{variable} must be 1 or 0; it is {value!r}")
    return default


SETTINGS = AutomationSettings.from_env()
# The automation sensors' state when the instance has none yet (a person can still switch them in the UI).
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if SETTINGS.automation else dg.DefaultSensorStatus.STOPPED


def llm_pool(settings: LLMSettings) -> str:
    """A stage's pool: `gpu` when its runs start their own vLLM engine (one per GPU), else `llm` (the endpoint)."""
    return GPU_POOL if settings.backend == "vllm" and not settings.base_url else LLM_POOL


def _updated(reads: Sequence[dg.AssetKey], settings: AutomationSettings) -> dg.AutomationCondition:
    """An input in `reads` (default: any) was updated, or (opted in) the asset's code version changed."""
    updated = dg.AutomationCondition.any_deps_updated()
    if reads:
        updated = updated.allow(dg.AssetSelection.assets(*reads))
    if settings.rerun_on_code_change:
        updated = updated | dg.AutomationCondition.code_version_changed()
    return updated


def _idle() -> dg.AutomationCondition:
    return ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress()


def follows_inputs(
    reads: Sequence[dg.AssetKey] = (),
    *,
    optional: Sequence[dg.AssetKey] = (),
    settings: AutomationSettings = SETTINGS,
) -> dg.AutomationCondition:
    """Materialize a partition when it is new, or when its inputs in `reads` (default: every dependency) were
    updated, since it was last requested or materialized; only once no dependency but the `optional` ones is
    missing and none is in progress. A failed partition waits for a person or a new input.

    `AutomationCondition.eager()` with the triggers narrowed, and one addition: on the first evaluation (automation
    switched on in a deployment that already has shards) a missing partition is built too, not only the partitions
    that go missing afterwards."""
    new = dg.AutomationCondition.newly_missing() | _updated(reads, settings)
    already_missing = dg.AutomationCondition.initial_evaluation() & dg.AutomationCondition.missing()
    deps_missing = dg.AutomationCondition.any_deps_missing()
    if optional:
        deps_missing = deps_missing.ignore(dg.AssetSelection.assets(*optional))
    label = "follows inputs" + (" or code" if settings.rerun_on_code_change else "")
    return ((new.since_last_handled() | already_missing) & ~deps_missing & _idle()).with_label(label)


def summarizes_inputs(settings: AutomationSettings = SETTINGS) -> dg.AutomationCondition:
    """For a table over every shard (eval/report): refresh after any input partition was updated, once none is in
    progress. Shards still on their way are not waited for: the report covers what exists."""
    return (_updated((), settings).since_last_handled() & _idle()).with_label("summarizes inputs")


def hub_condition(text_personas: dg.AssetKey, expanded_personas: dg.AssetKey, settings: AutomationSettings = SETTINGS):
    """The hub of a shard follows its expansion (nightly), or its text personas when expansion is off."""
    if settings.expansion == "off":
        return follows_inputs([text_personas], optional=[expanded_personas], settings=settings)
    return follows_inputs([expanded_personas], settings=settings)


LARGE_STAGES = dg.AssetSelection.tag(RUN_SIZE_TAG, LARGE)

# Two sensors because run tags are per sensor. A sensor requests a shard's ready stages together (synthesis and its
# evaluations in one run); the hub and the report, the steps across shards, go through the other.
stage_automation = dg.AutomationConditionSensorDefinition(
    "stage_automation",
    target=LARGE_STAGES,
    run_tags=SETTINGS.llm_run_tags,
    default_status=SENSOR_STATUS,
    minimum_interval_seconds=SETTINGS.tick_seconds,
    description="Materializes the stages of each shard (Text-to-Persona, synthesis, evaluation) when their inputs "
    "land, in runs with the larger task size (ecs/cpu, ecs/memory run tags).",
)

automation = dg.AutomationConditionSensorDefinition(
    "automation",
    target=dg.AssetSelection.all() - LARGE_STAGES,
    default_status=SENSOR_STATUS,
    minimum_interval_seconds=SETTINGS.tick_seconds,
    description="Materializes every other automated asset (the hub, eval/report) when its inputs land.",
)

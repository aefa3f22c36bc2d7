"""Declarative automation, tick by tick and in-process: what the automation sensors request as a shard's tables land
(the same conditions the daemon evaluates; test_production_topology.py watches a real daemon do it)."""

import os

import dagster as dg
import pytest

from persona_hub_dagster.definitions import defs
from persona_hub_dagster.defs import automation
from persona_hub_dagster.defs.automation import AutomationSettings, follows_inputs, hub_condition
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster_tests.conftest import REPO

SHARD = "s1"


class Ticks:
    """The automation sensors' evaluations against an instance, one tick after the other: each sensor evaluates its
    own targets with its own cursor, as the daemon does (by default, one sensor over everything)."""

    def __init__(self, definitions, instance: dg.DagsterInstance, sensors=None):
        self.definitions, self.instance = definitions, instance
        self.cursors = {sensor: None for sensor in (sensors or [None])}

    def tick(self) -> dict[str, set[str | None]]:
        requested = {}
        for sensor, cursor in self.cursors.items():
            selection = sensor.asset_selection if sensor is not None else None
            result = dg.evaluate_automation_conditions(
                self.definitions, self.instance, asset_selection=selection, cursor=cursor
            )
            self.cursors[sensor] = result.cursor
            requested.update(self._requested(result))
        return requested

    @staticmethod
    def _requested(result) -> dict[str, set[str | None]]:
        requested = {}
        for key_result in result.results:
            if key_result.true_subset.size:
                key = key_result.key.to_user_string()
                subset = key_result.true_subset
                requested[key] = set(subset.expensively_compute_partition_keys()) if subset.is_partitioned else {None}
        return requested

    def landed(self, *keys: str, partition: str | None = SHARD) -> None:
        for key in keys:
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=dg.AssetKey.from_user_string(key), partition=partition)
            )


@pytest.fixture
def ticks():
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(text_shards.name, [SHARD])
    return Ticks(defs, instance, SENSORS)


SENSORS = [automation.stage_automation, automation.automation]


@pytest.mark.slow
def test_a_shard_flows_from_raw_text_to_the_report_and_waits_for_the_nightly_expansion(ticks):
    # Only the demonstrations (needed by every shard's synthesis) are asked for before anything lands.
    assert ticks.tick() == {"demonstrations": {None}, "demonstrations_rejects": {None}}
    ticks.landed("demonstrations", "demonstrations_rejects", partition=None)
    assert ticks.tick() == {}

    ticks.landed("raw_text", "raw_text_rejects")  # the shard sensor's run
    assert ticks.tick() == {"text_personas": {SHARD}, "text_personas_rejects": {SHARD}}
    assert ticks.tick() == {}, "requested once, not on every tick"

    ticks.landed("text_personas", "text_personas_rejects")
    assert ticks.tick() == {}, "the hub waits for the nightly expansion; nothing else is eligible"

    ticks.landed("expanded_personas", "expanded_personas_rejects")  # the nightly run
    assert ticks.tick() == {"persona_hub": {SHARD}, "persona_hub_decisions": {SHARD}}

    ticks.landed("persona_hub", "persona_hub_decisions")
    # The coverage map, synthesis and its evaluations are requested together: one run for the shard, steps in
    # dependency order (persona_clusters before the draws that read it).
    requested = ticks.tick()
    stages = [key for key in ticks.definitions.get_repository_def().asset_graph.get_all_asset_keys()]
    expected = {k.to_user_string() for k in stages if k.path[0] in ("synthetic", "eval") and k.path[-1] != "report"}
    expected.add("persona_clusters")
    assert requested == {key: {SHARD} for key in expected}
    ticks.landed(*expected)
    assert ticks.tick() == {"eval/report": {None}}
    ticks.landed("eval/report", partition=None)
    assert ticks.tick() == {}
    # Releases are a decision: never automated.
    assert not any(key.startswith("release/") for key in requested)


def test_an_evaluation_follows_its_own_task_only(ticks):
    ticks.landed("demonstrations", "demonstrations_rejects", partition=None)
    everything = [k.to_user_string() for k in ticks.definitions.get_repository_def().asset_graph.get_all_asset_keys()]
    ticks.landed(*[k for k in everything if not k.startswith(("release/", "demonstrations", "eval/report"))])
    ticks.landed("eval/report", partition=None)
    ticks.tick()
    ticks.landed("synthetic/math", "synthetic/math_rejects")
    assert set(ticks.tick()) == {"eval/math", "eval/math_rejects", "eval/math_solutions"}


@pytest.mark.slow
def test_refreshed_demonstrations_do_not_re_synthesize_every_shard(ticks):
    ticks.landed("demonstrations", "demonstrations_rejects", partition=None)
    ticks.landed("raw_text", "text_personas", "expanded_personas", "persona_hub")
    ticks.tick()
    for task in TASKS:
        ticks.landed(f"synthetic/{task}", f"synthetic/{task}_rejects")
    ticks.tick()
    ticks.landed("demonstrations", "demonstrations_rejects", partition=None)
    assert not any(key.startswith("synthetic/") for key in ticks.tick())


def test_switching_automation_on_builds_what_is_missing_and_buildable(ticks):
    """eager() only builds partitions that go missing after its first evaluation; ours also builds those missing
    before it (a deployment that had shards before automation)."""
    ticks.landed("demonstrations", "demonstrations_rejects", partition=None)
    ticks.landed("raw_text", "raw_text_rejects")
    fresh = Ticks(defs, ticks.instance, SENSORS)  # a first evaluation, after the shard landed
    assert fresh.tick() == {"text_personas": {SHARD}, "text_personas_rejects": {SHARD}}


# The modes, on a two-stage graph with the same conditions (the code location reads its settings once, at load).
@pytest.mark.parametrize("expansion", ["nightly", "off"])
def test_expansion_off_lets_the_hub_follow_the_text_personas(expansion):
    settings = AutomationSettings(expansion=expansion)
    partitions = dg.DynamicPartitionsDefinition(name="shards")

    @dg.asset(partitions_def=partitions)
    def text_personas(): ...

    @dg.asset(partitions_def=partitions)
    def expanded_personas(): ...

    @dg.asset(
        partitions_def=partitions,
        deps=[text_personas, expanded_personas],
        automation_condition=hub_condition(text_personas.key, expanded_personas.key, settings),
    )
    def hub(): ...

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("shards", ["a"])
    runs = Ticks([text_personas, expanded_personas, hub], instance)
    runs.landed("text_personas", partition="a")
    assert runs.tick() == ({"hub": {"a"}} if expansion == "off" else {})


@pytest.mark.parametrize("rerun_on_code_change", [False, True])
def test_a_code_change_reruns_only_when_the_deployment_opts_in(rerun_on_code_change):
    settings = AutomationSettings(rerun_on_code_change=rerun_on_code_change)

    def graph(version: str):
        @dg.asset
        def upstream(): ...

        @dg.asset(deps=[upstream], code_version=version, automation_condition=follows_inputs(settings=settings))
        def stage(): ...

        return [upstream, stage]

    instance = dg.DagsterInstance.ephemeral()
    before = Ticks(graph("prompt-v1"), instance)
    before.landed("upstream", "stage", partition=None)
    assert before.tick() == {}
    after = Ticks(graph("prompt-v2"), instance)
    after.cursors = before.cursors
    assert after.tick() == ({"stage": {None}} if rerun_on_code_change else {})


def test_a_failed_partition_waits_for_a_person_or_a_new_input():
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]))
    def upstream(): ...

    @dg.asset(
        partitions_def=dg.StaticPartitionsDefinition(["a"]), deps=[upstream], automation_condition=follows_inputs()
    )
    def stage():
        raise RuntimeError("the model server is down")

    instance = dg.DagsterInstance.ephemeral()
    runs = Ticks([upstream, stage], instance)
    runs.landed("upstream", partition="a")
    assert runs.tick() == {"stage": {"a"}}
    dg.materialize([upstream, stage], instance=instance, partition_key="a", selection=[stage], raise_on_error=False)
    assert runs.tick() == {}, "a failure is not retried on every tick"
    runs.landed("upstream", partition="a")
    assert runs.tick() == {"stage": {"a"}}


def test_settings_come_from_the_environment_with_clear_errors(monkeypatch):
    monkeypatch.setenv(automation.EXPANSION_ENV, "weekly")
    with pytest.raises(ValueError, match="PERSONA_HUB_EXPANSION must be one of nightly, off"):
        AutomationSettings.from_env()
    monkeypatch.setenv(automation.EXPANSION_ENV, "off")
    monkeypatch.setenv(automation.RERUN_ENV, "yes please")
    with pytest.raises(ValueError, match="PERSONA_HUB_RERUN_ON_CODE_CHANGE must be 1 or 0"):
        AutomationSettings.from_env()
    monkeypatch.setenv(automation.RERUN_ENV, "1")
    monkeypatch.setenv(automation.LLM_RUN_CPU_ENV, "8192")
    settings = AutomationSettings.from_env()
    assert (settings.expansion, settings.rerun_on_code_change) == ("off", True)
    assert settings.llm_run_tags == {"ecs/cpu": "8192", "ecs/memory": "16384"}


def test_llm_stages_share_a_pool_and_ask_for_larger_runs():
    graph = defs.get_repository_def().asset_graph
    pools = {
        key.to_user_string(): graph.assets_def_for_key(key).op.pool
        for key in graph.get_all_asset_keys()
        if graph.assets_def_for_key(key).is_executable
    }
    assert pools["persona_hub"] == automation.HUB_POOL
    assert pools["text_personas"] == pools["synthetic/math"] == pools["eval/math"] == automation.LLM_POOL
    assert pools["raw_text"] is None and pools["eval/tools"] is None  # no model: no LLM pool
    assert automation.stage_automation.run_tags == automation.SETTINGS.llm_run_tags
    jobs = defs.get_repository_def()
    assert jobs.get_job("process_text_shard").tags == automation.SETTINGS.llm_run_tags
    assert jobs.get_job("expand_personas_nightly").tags == automation.SETTINGS.llm_run_tags


@pytest.mark.slow
def test_a_deployment_sizes_automated_runs_with_a_stage_settings_file(tmp_path):
    """Automated runs carry no run config: PERSONA_HUB_STAGE_SETTINGS sets the defaults (and the code versions)."""
    import subprocess
    import sys

    from persona_hub_dagster.lib.personas.text_to_persona import TextToPersonaSettings
    from persona_hub_dagster.lib.settings import StageSettingsError, deployment_defaults, read_stage_settings

    shipped = read_stage_settings(str(REPO / "persona_hub_dagster" / "data" / "demo_settings.yaml"))
    settings = deployment_defaults(TextToPersonaSettings, "text_to_persona", shipped)
    assert (settings.max_texts, settings.relations_per_text) == (24, 1)
    with pytest.raises(StageSettingsError, match="text_to_persona has no setting max_text;"):
        deployment_defaults(TextToPersonaSettings, "text_to_persona", {"text_to_persona": {"max_text": 2}})

    def load(settings_file: str) -> subprocess.CompletedProcess:
        script = (
            "from persona_hub_dagster.definitions import defs\n"
            "spec = defs.get_assets_def('text_personas').specs_by_key\n"
            "print(next(iter(spec.values())).code_version)\n"
            "job = defs.resolve_job_def('process_text_shard')\n"
            "print(job.run_config_schema.config_type.fields['ops'].config_type.fields['text_to_persona']"
            ".config_type.fields['config'].config_type.fields['max_texts'].default_value)\n"
        )
        env = {**os.environ, "PERSONA_HUB_STAGE_SETTINGS": settings_file}
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)

    # max_texts alone: a setting the stage's own version does not cover; the file's values still mark it stale.
    (tmp_path / "small.yaml").write_text("text_to_persona:\n  config: {max_texts: 2}\n")
    (tmp_path / "typo.yaml").write_text("text_to_personas: {max_texts: 2}\n")
    default, small, typo = load(""), load(str(tmp_path / "small.yaml")), load(str(tmp_path / "typo.yaml"))
    assert default.returncode == small.returncode == 0, default.stderr + small.stderr
    (default_version, default_max), (small_version, small_max) = default.stdout.split(), small.stdout.split()
    assert (small_max, default_max) == ("2", str(TextToPersonaSettings().max_texts))
    assert small_version != default_version, "the file's values enter the code version (the UI marks it stale)"
    assert typo.returncode != 0 and "names text_to_personas, which no stage is" in typo.stderr


def test_the_nightly_expansion_skips_when_expansion_is_off(monkeypatch):
    from persona_hub_dagster.defs.personas import schedules

    monkeypatch.setattr(schedules, "SETTINGS", AutomationSettings(expansion="off"))
    skipped = schedules.nightly_persona_expansion(dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral()))
    assert isinstance(skipped, dg.SkipReason) and "PERSONA_HUB_EXPANSION=off" in skipped.skip_message

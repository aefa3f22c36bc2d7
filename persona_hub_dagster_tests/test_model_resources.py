"""The llm and embeddings resources inside real Dagster runs, and their configuration from the environment."""

import dataclasses

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.models import EmbeddingsResource, JudgeResource, LLMResource, usage_metadata
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib.llm import LLMRequest, LLMSettings, SamplingParams
from persona_hub_dagster.lib.llm.settings import setting_description
from persona_hub_dagster.lib.tables import LLM_RESPONSES


@dg.asset(partitions_def=text_shards)
def described_topics(
    context: dg.AssetExecutionContext, llm: LLMResource, embeddings: EmbeddingsResource, storage: DeltaStorageResource
) -> dg.MaterializeResult:
    store = storage.store()
    client = llm.client(store, stage="described_topics", shard=context.partition_key, run_id=context.run.run_id)
    topics = ["knitting", "orbital mechanics"]
    responses = client.generate(
        [
            LLMRequest.chat(
                f"One sentence on who reads about {t}.", sampling=SamplingParams(max_tokens=16), request_id=t
            )
            for t in topics
        ]
    )
    vectors = embeddings.embedder(store).encode([r.text for r in responses])
    rows = pl.DataFrame(
        {
            "shard": context.partition_key,
            "topic": topics,
            "text": [r.text for r in responses],
            "dim": [len(v) for v in vectors],
        }
    )
    store.write_partitions("described_topics", rows, partitions=[context.partition_key])
    return dg.MaterializeResult(metadata={**usage_metadata(client.usage), "model": client.identity})


@pytest.fixture
def run(tmp_path, instance):
    instance.add_dynamic_partitions(text_shards.name, ["s1"])
    storage = DeltaStorageResource(root=str(tmp_path / "delta"))
    resources = {
        "storage": storage,
        "io_manager": DeltaIOManager(storage=storage),
        "llm": LLMResource(n_ctx=512),
        "embeddings": EmbeddingsResource(),
    }

    def materialize():
        result = dg.materialize([described_topics], partition_key="s1", instance=instance, resources=resources)
        return result.asset_materializations_for_node("described_topics")[0].metadata, storage.store()

    return materialize


@pytest.mark.llm
def test_an_asset_uses_the_llm_and_reports_usage_per_partition(run):
    metadata, store = run()
    assert metadata["llm/requests"].value == 2 and metadata["llm/calls"].value == 2
    assert metadata["llm/cache_hits"].value == 0 and metadata["llm/completion_tokens"].value > 0
    assert metadata["llm/completion_tokens_per_s"].value > 0
    assert metadata["model"].value.startswith("llama_cpp:SmolLM2-135M-Instruct")
    assert store.read("described_topics")["dim"].to_list() == [384, 384]
    cache = store.read(LLM_RESPONSES)
    assert set(cache["namespace"]) == {"described_topics.s1"} and cache.height == 2

    # Re-materializing the partition is served by the response cache: no tokens paid, same answers.
    first = store.read("described_topics").sort("topic")
    metadata, store = run()
    assert metadata["llm/cache_hits"].value == 2 and metadata["llm/calls"].value == 0
    assert metadata["llm/prompt_tokens"].value == 0
    assert store.read("described_topics").sort("topic")["text"].to_list() == first["text"].to_list()


def test_configuration_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONA_HUB_LLM_BACKEND", "openai")
    monkeypatch.setenv("PERSONA_HUB_LLM_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    monkeypatch.setenv("PERSONA_HUB_LLM_BASE_URL", "http://10.0.0.5:8000/v1")
    monkeypatch.setenv("PERSONA_HUB_EMBEDDING_MODEL", str(tmp_path))
    settings = LLMResource().settings()
    assert (settings.backend, settings.model, settings.base_url) == (
        "openai",
        "Qwen/Qwen2.5-7B-Instruct",
        "http://10.0.0.5:8000/v1",
    )
    assert EmbeddingsResource().model == str(tmp_path)
    # Run config still wins over the environment.
    assert LLMResource(backend="llama_cpp", model=None).settings().backend == "llama_cpp"


def test_the_llm_is_only_available_inside_a_step():
    with pytest.raises(RuntimeError, match="only available while a run's step executes"):
        LLMResource().open()


def test_counts_from_the_environment_are_checked_with_a_clear_message(monkeypatch):
    from persona_hub_dagster.defs.models import LLMResource
    from persona_hub_dagster.lib.llm import LLMConfigError, LLMSettings

    monkeypatch.setenv("PERSONA_HUB_LLM_MAX_IN_FLIGHT", "64")
    monkeypatch.setenv("PERSONA_HUB_LLM_TOKEN_BUDGET", "100000")
    resource = LLMResource()
    assert (resource.max_in_flight, resource.token_budget) == (64, 100000)
    assert LLMSettings.from_env().max_in_flight == 64
    monkeypatch.setenv("PERSONA_HUB_LLM_MAX_IN_FLIGHT", "lots")
    with pytest.raises(LLMConfigError, match="PERSONA_HUB_LLM_MAX_IN_FLIGHT must be a whole number"):
        LLMSettings.from_env()


@pytest.fixture
def no_llm_environment(monkeypatch):
    from persona_hub_dagster.lib.llm.settings import ENV, JUDGE_ENV, TOKEN_BUDGET_ENV

    for variable in (*ENV.values(), *JUDGE_ENV.values(), TOKEN_BUDGET_ENV):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("resource_type", [LLMResource, JudgeResource])
def test_every_llm_setting_is_a_resource_field_with_its_default_and_doc(resource_type, no_llm_environment):
    """The resources are built from LLMSettings: one definition of each setting's type, default and doc, in lib."""
    judge = resource_type is JudgeResource
    schema = resource_type.to_config_schema().as_field().config_type.fields
    resource = resource_type()
    for setting in dataclasses.fields(LLMSettings):
        field = resource_type.model_fields[setting.name]
        assert field.description == setting_description(setting.name, judge=judge)
        assert field.description.startswith(setting.metadata["doc"])
        assert schema[setting.name].description == field.description
        assert getattr(resource, setting.name) == setting.default, setting.name
        # A default set by a variable is read when the resource is built; the others are plain config defaults.
        if setting.metadata["env"]:
            assert not schema[setting.name].default_provided and f"${setting.metadata['env']}" in field.description
        else:
            assert schema[setting.name].default_value == setting.default
    assert resource.settings() == LLMSettings()
    # The resource's own fields besides the settings: what a run spends and whether it replays the cache.
    assert set(resource_type.model_fields) - {f.name for f in dataclasses.fields(LLMSettings)} == {
        "token_budget",
        "response_cache",
    }


def test_the_resources_read_the_variables_when_built(monkeypatch, no_llm_environment):
    monkeypatch.setenv("PERSONA_HUB_LLM_BACKEND", "openai")
    monkeypatch.setenv("PERSONA_HUB_LLM_MODEL", "generator")
    monkeypatch.setenv("PERSONA_HUB_JUDGE_MODEL", "judge")
    monkeypatch.setenv("PERSONA_HUB_LLM_THREADS", "3")
    assert LLMResource().settings() == LLMSettings.from_env()
    assert JudgeResource().settings() == LLMSettings.from_env(judge=True)
    assert (LLMResource().model, JudgeResource().model, JudgeResource().backend) == ("generator", "judge", "openai")
    assert JudgeResource().n_threads == 3
    monkeypatch.setenv("PERSONA_HUB_LLM_MODEL", "later")
    assert LLMResource().model == "later"  # not frozen when the module was imported


@pytest.mark.parametrize("resource_type", [LLMResource, JudgeResource])
def test_run_config_sets_every_setting(resource_type, no_llm_environment):
    @dg.asset
    def configured(llm: LLMResource) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"settings": dg.MetadataValue.json(llm.settings().describe())})

    values = {"model": "run-model", "n_ctx": 512, "server_startup_timeout_s": 30.0, "max_model_len": 2048}
    result = dg.materialize(
        [configured],
        resources={"llm": resource_type.configure_at_launch()},
        run_config={"resources": {"llm": {"config": values}}},
    )
    described = result.asset_materializations_for_node("configured")[0].metadata["settings"].value
    assert described == {**LLMSettings().describe(), **values}

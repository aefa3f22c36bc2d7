"""The LLM layer's vocabulary: requests, sampling parameters, raw completions and final responses.

A stage builds `LLMRequest`s and gets back one `LLMResponse` per request, in order, from `LLMClient.generate`.
A response is either ok (text, and `parsed` when a JSON schema was given) or a rejection: `error` says why and
`text` keeps what the model said, so callers store it instead of dropping it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = 0  # a seed makes runs reproducible; retries of an invalid output use seed + attempt
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion to make. `request_id` is the caller's handle (e.g. a text_id), carried to the response."""

    messages: tuple[Mapping[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: Mapping[str, Any] | None = None
    request_id: str | None = None

    @classmethod
    def chat(
        cls,
        user: str,
        *,
        system: str | None = None,
        sampling: SamplingParams | None = None,
        json_schema: Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> LLMRequest:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return cls(tuple(messages), sampling or SamplingParams(), json_schema, request_id)

    def with_seed(self, seed: int | None) -> LLMRequest:
        return replace(self, sampling=replace(self.sampling, seed=seed))

    def cache_key(self, model_identity: str) -> str:
        """Hash of everything that determines the completion: model, messages, sampling, schema.
        (Not request_id: two callers asking the same thing share one completion.)"""
        payload = json.dumps(
            {
                "model": model_identity,
                "messages": [dict(m) for m in self.messages],
                "sampling": self.sampling.as_dict(),
                "schema": self.json_schema,
            },
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Completion:
    """What a backend returned for one request: raw text and accounting, or a transport error."""

    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None  # transport-level failure after the backend's own retries (timeout, 5xx, ...)
    cache_hit: bool = False


@dataclass(frozen=True)
class LLMResponse:
    request_id: str | None
    text: str | None
    parsed: Any | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    backend: str
    model: str
    cache_hit: bool
    attempts: int
    error: str | None = None  # None: accepted. Otherwise the rejection reason; `text` keeps the raw output.
    backend_failed: bool = False  # the error is the backend's (transport, HTTP, server), not the model's output

    @property
    def ok(self) -> bool:
        return self.error is None


class BackendFailure(RuntimeError):
    """Requests the backend could not answer after its retries (connection refused, timeouts, HTTP errors, a broken
    server): an infrastructure fault, not a model output. The step stops before writing its tables, so a shard's
    good rows are never replaced by error rows; the calls that did succeed are in the response cache."""


def request_batches(requests: Sequence[LLMRequest], size: int) -> list[Sequence[LLMRequest]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)]

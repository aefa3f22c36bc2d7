"""Any OpenAI-compatible chat server: `vllm serve`, llama.cpp's server, Ollama, a hosted API.

- Bounded concurrency: a batch is sent by `max_concurrency` threads, which keeps a continuous-batching server
  (vLLM) busy without flooding it.
- Timeouts and retries come from the official `openai` client: 408/409/429/5xx and connection errors are retried
  with exponential backoff and jitter, honouring the server's Retry-After (up to two minutes). What still fails
  becomes a Completion with an error, never an exception out of the batch.
- The API key is read from an environment variable (default PERSONA_HUB_LLM_API_KEY); it is never stored in
  configuration, logged, or part of the identity.
- JSON schemas go out as `response_format: json_schema` (guided decoding on vLLM). A server that rejects that mode
  (llama-cpp-python's server answers 500) is switched, once, to `json_object` with the schema in the prompt (and
  in the response_format, which llama-cpp-python's server enforces with a grammar).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from persona_hub_dagster.lib.llm.structured import schema_instructions
from persona_hub_dagster.lib.llm.types import Completion, LLMRequest

log = logging.getLogger(__name__)

API_KEY_ENV = "PERSONA_HUB_LLM_API_KEY"


class OpenAICompatibleBackend:
    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        api_key_env: str | None = API_KEY_ENV,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        name: str = "openai",
    ):
        import openai

        self.name = name
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max(1, max_concurrency)
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=self.base_url,
            # Local servers ignore the key, but the client insists on one.
            api_key=(os.environ.get(api_key_env) if api_key_env else None) or "not-needed",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._structured_mode_index = 0  # into STRUCTURED_MODES
        self._structured_mode_known = False
        self._mode_lock = threading.Lock()
        # No model named: a local server (llama.cpp, Ollama with one model) serves one; ask it which.
        self.model = model or self._served_model()

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.model}"

    def complete(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        if len(requests) <= 1 or self.max_concurrency == 1:
            return [self._complete_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(self._complete_one, requests))

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------------

    def _served_model(self) -> str:
        try:
            models = self._client.models.list().data
        except self._openai.OpenAIError as exc:
            raise ConnectionError(f"cannot list the models of {self.base_url}: {_short(exc)}") from exc
        if not models:
            raise ValueError(f"{self.base_url} serves no model; set PERSONA_HUB_LLM_MODEL")
        return models[0].id

    def _complete_one(self, request: LLMRequest) -> Completion:
        sampling = request.sampling
        kwargs = {
            "model": self.model,
            "messages": [dict(m) for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        started = time.perf_counter()
        try:
            if request.json_schema is None:
                response = self._client.chat.completions.create(**kwargs)
            else:
                response = self._structured(kwargs, request.json_schema)
        except self._openai.APITimeoutError as exc:
            return Completion(None, error=f"timeout: {exc}", latency_s=time.perf_counter() - started)
        except self._openai.APIStatusError as exc:
            return Completion(
                None, error=f"http_{exc.status_code}: {_short(exc)}", latency_s=time.perf_counter() - started
            )
        except self._openai.APIConnectionError as exc:
            return Completion(None, error=f"connection: {exc}", latency_s=time.perf_counter() - started)
        except (self._openai.APIResponseValidationError, json.JSONDecodeError, ValueError, TypeError) as exc:
            return Completion(None, error=f"malformed_response: {_short(exc)}", latency_s=time.perf_counter() - started)
        latency = time.perf_counter() - started
        try:
            choice = response.choices[0]
            text = choice.message.content
            finish_reason = choice.finish_reason
        except (AttributeError, IndexError, TypeError) as exc:
            return Completion(None, error=f"malformed_response: no choices ({exc})", latency_s=latency)
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=latency,
        )

    def _structured(self, kwargs: dict, schema) -> object:
        """Send a schema-constrained request in the best mode the server accepts, learning the mode once.

        Modes, best first: `json_schema` (OpenAI, vLLM: guided decoding); `json_object` carrying the schema
        (llama-cpp-python's server turns it into a grammar); plain `json_object`. The last two also put the schema
        in the prompt. While the mode is unknown, a mode is probed without transport retries: a server that rejects
        it answers 4xx/500, and retrying that with backoff would only delay the switch.
        """
        while True:
            mode = STRUCTURED_MODES[self._structured_mode_index]
            known = self._structured_mode_known
            client = self._client if known else self._client.with_options(max_retries=0)
            try:
                response = client.chat.completions.create(**_with_structured_mode(kwargs, schema, mode))
            except (
                self._openai.BadRequestError,
                self._openai.UnprocessableEntityError,
                self._openai.InternalServerError,
            ) as exc:
                if known or self._structured_mode_index == len(STRUCTURED_MODES) - 1:
                    raise  # the mode worked before, or there is nothing left to try: a real error
                with self._mode_lock:
                    if STRUCTURED_MODES[self._structured_mode_index] == mode:
                        self._structured_mode_index += 1
                        log.warning(
                            "%s rejected structured mode %s (%s); trying %s",
                            self.base_url,
                            mode,
                            _short(exc),
                            STRUCTURED_MODES[self._structured_mode_index],
                        )
                continue
            self._structured_mode_known = True
            return response

    @property
    def structured_mode(self) -> str | None:
        """The structured-output mode this server accepted (None until one was tried)."""
        return STRUCTURED_MODES[self._structured_mode_index] if self._structured_mode_known else None


STRUCTURED_MODES = ("json_schema", "json_object+schema", "json_object")


def _with_structured_mode(kwargs: dict, schema, mode: str) -> dict:
    if mode == "json_schema":
        return {
            **kwargs,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(schema), "strict": True},
            },
        }
    messages = [dict(m) for m in kwargs["messages"]]
    instructions = schema_instructions(schema)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{instructions}"
    else:
        messages.insert(0, {"role": "system", "content": instructions})
    response_format = {"type": "json_object"}
    if mode == "json_object+schema":
        response_format["schema"] = dict(schema)
    return {**kwargs, "messages": messages, "response_format": response_format}


def _short(exc: Exception, limit: int = 300) -> str:
    return str(exc).replace("\n", " ")[:limit]

"""Any OpenAI-compatible chat server: `vllm serve`, llama.cpp's server, Ollama, a hosted API.

- A streaming window (lib/llm/window.py): up to `max_in_flight` requests in flight (default 256, the size of
  vLLM's default batch), each slot refilled as its answer arrives, on one event loop. `open_stream()` gives callers
  the stream itself (LLMClient streams a whole stage through it, committing answers as they come); `complete()` is
  the same stream for one list of requests.
- HTTP is aiohttp, called directly: the official `openai` client costs ~4 ms of CPU per request on its default
  transport and ~1.7 ms on aiohttp, which caps one core at a few hundred requests/s, below what one vLLM server
  answers; the chat-completions call itself is small (bench/llm_window.py keeps the `openai` client as the baseline).
- Adaptive concurrency: a 429 halves the window (at most once per round trip; it grows back by one per window of
  answers), and the request turned away leaves its slot, waits the server's Retry-After (else exponential backoff
  with jitter) outside the window and comes back first in line, up to `max_retries` times.
- 408/409/5xx, timeouts and connection errors are retried in place with exponential backoff (0.5 s doubling, up to
  8 s, minus up to 25% jitter) or the server's Retry-After (up to two minutes), `max_retries` times. What still
  fails becomes a Completion with an error, never an exception out of the stream.
- The API key is read from an environment variable (default PERSONA_HUB_LLM_API_KEY); it is never stored in
  configuration, logged, or part of the identity.
- JSON schemas go out as `response_format: json_schema` (guided decoding on vLLM). A server that rejects that mode
  (llama-cpp-python's server answers 500) is switched, once, to `json_object` with the schema in the prompt (and
  in the response_format, which llama-cpp-python's server enforces with a grammar).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from persona_hub_dagster.lib.llm.structured import schema_instructions
from persona_hub_dagster.lib.llm.types import Completion, LLMRequest
from persona_hub_dagster.lib.llm.window import AdaptiveWindow, Call, RequestStream, Requeue

log = logging.getLogger(__name__)

API_KEY_ENV = "PERSONA_HUB_LLM_API_KEY"


class OpenAICompatibleBackend:
    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        api_key_env: str | None = API_KEY_ENV,
        max_in_flight: int = 256,
        adaptive: bool = True,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        name: str = "openai",
    ):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.max_in_flight = max(1, max_in_flight)
        self.adaptive = adaptive
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # Local servers ignore the key; it is sent as the API expects and kept nowhere else.
        key = (os.environ.get(api_key_env) if api_key_env else None) or "not-needed"
        self._headers = {"Authorization": f"Bearer {key}"}
        self._structured_mode_index = 0  # into STRUCTURED_MODES
        self._structured_mode_known = False
        # No model named: a local server (llama.cpp, Ollama with one model) serves one; ask it which.
        self.model = model or self._served_model()

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend({self.base_url!r}, {self.model!r}, max_in_flight={self.max_in_flight})"

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.model}"

    def open_stream(self) -> RequestStream:
        """A stream of requests through a window of `max_in_flight` (enter it to start, leave it to stop)."""
        return RequestStream(self._opened_call, AdaptiveWindow(self.max_in_flight, adaptive=self.adaptive))

    def complete(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        answers: dict[int, Completion] = {}
        with self.open_stream() as stream:
            for index, request in enumerate(requests):
                stream.submit(index, request)
            while len(answers) < len(requests):
                index, completion = stream.next()
                answers[index] = completion
        return [answers[i] for i in range(len(requests))]

    def close(self) -> None:
        pass  # each stream opens and closes its own connections

    # ------------------------------------------------------------------------------------------------

    def _served_model(self) -> str:
        request = urllib.request.Request(f"{self.base_url}/models", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout_s, 30)) as response:
                models = json.loads(response.read()).get("data") or []
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"cannot list the models of {self.base_url}: {_short(exc)}") from exc
        if not models:
            raise ValueError(f"{self.base_url} serves no model; set PERSONA_HUB_LLM_MODEL")
        return models[0]["id"]

    @contextlib.asynccontextmanager
    async def _opened_call(self, window: AdaptiveWindow) -> AsyncIterator[Call]:
        """One HTTP session on the stream's loop, with a keep-alive connection per slot of the window."""
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self._headers,
        )
        try:
            yield lambda request, requeues: self._complete_one(session, window, request, requeues)
        finally:
            await session.close()

    async def _complete_one(self, session, window: AdaptiveWindow, request: LLMRequest, requeues: int) -> Completion:
        sampling = request.sampling
        payload: dict = {
            "model": self.model,
            "messages": [dict(m) for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        started = time.perf_counter()
        if request.json_schema is None:
            answer = await self._post(session, window, payload, requeues)
        else:
            answer = await self._structured(session, window, payload, request.json_schema, requeues)
        latency = time.perf_counter() - started
        if isinstance(answer, _Failed):
            return Completion(None, error=answer.error, latency_s=latency)
        try:
            choice = answer["choices"][0]
            text, finish_reason = choice["message"].get("content"), choice.get("finish_reason")
            usage = answer.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            return Completion(None, error=f"malformed_response: no choices ({_short(exc)})", latency_s=latency)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
        )

    async def _post(self, session, window: AdaptiveWindow, payload: dict, requeues: int, retries: int | None = None):
        """The chat completion's JSON body, or _Failed. What may pass on another try is retried in place; a 429 goes
        back to the window (Requeue) while `requeues` allows."""
        import aiohttp

        retries = self.max_retries if retries is None else retries
        failed = _Failed(None, "connection: not attempted")
        for attempt in range(retries + 1):
            delay = None
            try:
                async with session.post(f"{self.base_url}/chat/completions", json=payload) as response:
                    status, body, headers = response.status, await response.read(), response.headers
            except TimeoutError:
                failed = _Failed(None, f"timeout: no answer within {self.timeout_s}s")
            except aiohttp.ClientError as exc:
                failed = _Failed(None, f"connection: {_short(exc)}")
            else:
                if status == 200:
                    try:
                        return json.loads(body)
                    except ValueError as exc:
                        return _Failed(status, f"malformed_response: {_short(exc)}")
                failed = _Failed(status, f"http_{status}: {_error_message(body)}")
                if status == 429:
                    window.throttled()
                    if requeues < self.max_retries:
                        raise Requeue(_retry_delay(headers, requeues))
                    return failed
                if status not in (408, 409) and status < 500:
                    return failed  # asking again cannot fix a bad request
                delay = _retry_after(headers)
            if attempt < retries:
                await asyncio.sleep(delay if delay is not None else _backoff(attempt))
        return failed

    async def _structured(self, session, window: AdaptiveWindow, payload: dict, schema, requeues: int):
        """Send a schema-constrained request in the best mode the server accepts, learning the mode once.

        Modes, best first: `json_schema` (OpenAI, vLLM: guided decoding); `json_object` carrying the schema
        (llama-cpp-python's server turns it into a grammar); plain `json_object`. The last two also put the schema
        in the prompt. While the mode is unknown, a mode is probed without retries: a server that rejects it answers
        4xx/500, and retrying that with backoff would only delay the switch.
        """
        while True:
            mode = STRUCTURED_MODES[self._structured_mode_index]
            known = self._structured_mode_known
            answer = await self._post(
                session, window, _with_structured_mode(payload, schema, mode), requeues, None if known else 0
            )
            rejected_mode = (
                isinstance(answer, _Failed)
                and answer.status is not None
                and (answer.status in (400, 422) or answer.status >= 500)
            )
            if rejected_mode and not known and self._structured_mode_index < len(STRUCTURED_MODES) - 1:
                # One event loop: no other request changes the mode between the check and the switch.
                if STRUCTURED_MODES[self._structured_mode_index] == mode:
                    self._structured_mode_index += 1
                    log.warning(
                        "%s rejected structured mode %s (%s); trying %s",
                        self.base_url,
                        mode,
                        answer.error,
                        STRUCTURED_MODES[self._structured_mode_index],
                    )
                continue
            if not isinstance(answer, _Failed):
                self._structured_mode_known = True
            return answer

    @property
    def structured_mode(self) -> str | None:
        """The structured-output mode this server accepted (None until one was tried)."""
        return STRUCTURED_MODES[self._structured_mode_index] if self._structured_mode_known else None


@dataclass(frozen=True)
class _Failed:
    status: int | None  # the HTTP status; None when no answer came
    error: str


def _backoff(attempt: int) -> float:
    """0.5 s doubling per attempt, at most 8 s, minus up to 25% jitter (the openai client's policy)."""
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


def _retry_after(headers) -> float | None:
    """The server's Retry-After (or Retry-After-Ms) in seconds, where it gave one of at most two minutes."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        try:
            delay = float(headers.get(name)) / divisor
        except (TypeError, ValueError):
            continue
        if 0 < delay <= 120:
            return delay
    return None


def _retry_delay(headers, requeues: int) -> float:
    """How long a turned-away request waits: Retry-After, else backoff; spread (up to +25%) so that requests turned
    away together do not come back together."""
    delay = _retry_after(headers)
    return delay * (1 + 0.25 * random.random()) if delay is not None else _backoff(requeues)


def _error_message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return _short(message or body[:300].decode("utf-8", "replace"))


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


def _short(exc: object, limit: int = 300) -> str:
    return str(exc).replace("\n", " ")[:limit]

"""LLMClient: the one object every generative stage talks to, whatever the backend.

    client = LLMClient(backend, cache=ResponseCache(store, cache_namespace("text_personas", shard)))
    responses = client.generate(requests)          # one response per request, in order
    client.usage.as_metadata()                     # tokens, calls, cache hits, rejections, tokens/s

For each batch: completions already in the cache are replayed; the rest go to the backend in one batched call and
are recorded in the cache (one commit per batch); outputs that must follow a JSON schema are parsed and validated,
and the invalid ones are asked again with a different seed, up to `max_attempts`; what still fails comes back as a
rejection with the raw text and the reason. One bad output never fails the batch: whatever parsing one answer
raises is that request's rejection (`parse_error: ...`), and a backend's text is made encodable (a lone surrogate
becomes U+FFFD) before it is cached or stored. A request the backend itself could not answer after its retries
(connection, timeout, HTTP error) is not an output: once the batch's successful calls are cached, `generate`
raises BackendFailure, so a stage stops instead of recording infrastructure faults as rejections (and replacing a
shard's rows with them).

One module, a little over 400 lines, on purpose: the batched path (LLMClient) and the streaming one
(_StreamedGeneration) are one mechanism, sharing the client's cache, retry, judging and accounting steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from persona_hub_dagster.lib.llm.cache import ResponseCache
from persona_hub_dagster.lib.llm.progress import Progress
from persona_hub_dagster.lib.llm.structured import parse_structured
from persona_hub_dagster.lib.llm.types import BackendFailure, Completion, LLMRequest, LLMResponse, request_batches


class Backend(Protocol):
    """A model behind some API. `complete` answers every request (errors as Completion.error), in order."""

    name: str  # llama_cpp | openai | vllm | ...
    model: str

    @property
    def identity(self) -> str:
        """What distinguishes this backend's outputs: part of every cache key."""
        ...

    def complete(self, requests: Sequence[LLMRequest]) -> list[Completion]: ...

    def close(self) -> None: ...


@dataclass
class UsageStats:
    """What a stage spent, for Dagster metadata (per partition) and the UI's plots."""

    requests: int = 0  # responses returned
    calls: int = 0  # completions made by the backend, retries included
    cache_hits: int = 0  # completions replayed from the cache
    retries: int = 0  # attempts beyond the first
    rejections: int = 0  # responses returned with an error
    prompt_tokens: int = 0  # of the backend calls (cache hits cost nothing)
    completion_tokens: int = 0
    backend_seconds: float = 0.0  # wall time spent waiting for the backend
    rejection_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def completion_tokens_per_s(self) -> float:
        return self.completion_tokens / self.backend_seconds if self.backend_seconds else 0.0

    def merge(self, other: UsageStats) -> None:
        for name in ("requests", "calls", "cache_hits", "retries", "rejections", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.backend_seconds += other.backend_seconds
        for reason, count in other.rejection_reasons.items():
            self.rejection_reasons[reason] = self.rejection_reasons.get(reason, 0) + count

    def as_metadata(self) -> dict[str, float | int | dict]:
        return {
            "llm/requests": self.requests,
            "llm/calls": self.calls,
            "llm/cache_hits": self.cache_hits,
            "llm/retries": self.retries,
            "llm/rejections": self.rejections,
            "llm/prompt_tokens": self.prompt_tokens,
            "llm/completion_tokens": self.completion_tokens,
            "llm/backend_seconds": round(self.backend_seconds, 3),
            "llm/completion_tokens_per_s": round(self.completion_tokens_per_s, 2),
            "llm/rejection_reasons": dict(sorted(self.rejection_reasons.items())),
        }


@dataclass
class TokenBudget:
    """The tokens (prompt + completion) one run's calls to one model may spend; replayed answers are free. Shared
    by the run's clients, so that every stage of the run draws on the same budget."""

    limit: int | None
    spent: int = 0

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


class LLMClient:
    def __init__(
        self, backend: Backend | Callable[[], Backend], *, cache: ResponseCache | None = None, max_attempts: int = 3
    ):
        """`backend`, or a function that opens it: then it is opened on first use, so a stage with nothing to ask
        (a persona shard's Text-to-Persona) never loads a model or starts a server."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._backend: Backend | None = None if _is_opener(backend) else backend
        self._open = backend if _is_opener(backend) else None
        self.cache = cache
        self.max_attempts = max_attempts
        self.usage = UsageStats()
        self.progress: Progress | None = None  # set by the stage that runs this client
        self.budget: TokenBudget | None = None  # set by the run: generation stops at a batch boundary when spent
        self.stopped_by_budget = False

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._open()
        return self._backend

    @property
    def opened(self) -> bool:
        return self._backend is not None

    @property
    def identity(self) -> str:
        return self.backend.identity

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        if self.progress is not None:
            self.progress.plan(len(requests))
        return self._generate(requests)

    def _generate(self, requests: Sequence[LLMRequest]) -> list[LLMResponse]:
        results: list[LLMResponse | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(self.max_attempts):
            # The first attempt asks exactly what the caller asked (and hits its cache entry); a retry changes the
            # seed, since the same seed would reproduce the same invalid output.
            batch = [_attempt_request(requests[i], attempt) for i in pending]
            completions = self._complete(batch)
            still_pending = []
            for index, completion in zip(pending, completions, strict=True):
                response = self._judge(requests[index], completion, attempt + 1)
                if response.ok or attempt == self.max_attempts - 1 or not _retryable(response.error):
                    results[index] = response
                else:
                    still_pending.append(index)
            self.usage.retries += len(still_pending)
            pending = still_pending
            if not pending:
                break
        final = [r for r in results if r is not None]
        assert len(final) == len(requests)
        failed = [r for r in final if r.backend_failed]
        if failed:
            raise self._backend_failure(failed, len(final))
        for response in final:
            self._count(response)
        return final

    def generate_batches(self, requests: Sequence[LLMRequest], batch_size: int) -> Iterator[list[LLMResponse]]:
        """The responses batch by batch, in order.

        A backend that streams (a served model: `open_stream`) gets every request through its window of in-flight
        requests at once, with no barrier between batches: a batch is handed over as soon as its last answer is in,
        and answers are committed to the cache as they arrive (about once a second), so a run that dies loses at
        most the uncommitted answers and the calls in flight. Any other backend answers one batch per call, each batch
        one cache commit."""
        if self.progress is not None:
            self.progress.plan(len(requests))
        if self.over_budget() or not requests:
            return
        open_stream = getattr(self.backend, "open_stream", None)
        if open_stream is None:
            for batch in request_batches(requests, batch_size):
                if self.over_budget():
                    return
                yield self._generate(batch)
            return
        yield from _StreamedGeneration(self, requests, batch_size).batches(open_stream)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    # ------------------------------------------------------------------------------------------------

    def _complete(self, batch: list[LLMRequest]) -> list[Completion]:
        keys = [request.cache_key(self.identity) for request in batch]
        cached = self.cache.lookup(keys) if self.cache is not None else {}
        missing = [i for i, key in enumerate(keys) if key not in cached]
        fresh: dict[int, Completion] = {}
        if missing:
            started = time.perf_counter()
            answers = self.backend.complete([batch[i] for i in missing])
            self.usage.backend_seconds += time.perf_counter() - started
            if len(answers) != len(missing):
                raise RuntimeError(
                    f"{self.backend.name} returned {len(answers)} completions for {len(missing)} requests"
                )
            answers = [_encodable(answer) for answer in answers]
            fresh = dict(zip(missing, answers, strict=True))
            self._fresh(answers)
            if self.cache is not None:
                self.cache.put(
                    {keys[i]: c for i, c in fresh.items()}, backend=self.backend.name, model=self.backend.model
                )
        self.usage.cache_hits += len(keys) - len(missing)
        return [fresh[i] if i in fresh else cached[keys[i]] for i in range(len(batch))]

    def over_budget(self) -> bool:
        """The run's token budget is spent: generation stops at the next batch boundary (and says so)."""
        if self.budget is not None and self.budget.exhausted:
            self.stopped_by_budget = True
        return self.stopped_by_budget

    def _count(self, response: LLMResponse) -> None:
        """A request's final response, in the usage and the progress."""
        usage = self.usage
        usage.requests += 1
        if not response.ok:
            usage.rejections += 1
            reason = response.error.split(":", 1)[0]
            usage.rejection_reasons[reason] = usage.rejection_reasons.get(reason, 0) + 1
        if self.progress is not None:
            self.progress.answered(
                1,
                cache_hits=usage.cache_hits,
                completion_tokens=usage.completion_tokens,
                fresh=max(0, usage.requests - usage.cache_hits),
            )

    def _backend_failure(self, failed: Sequence[LLMResponse], total: int) -> BackendFailure:
        reasons = sorted({r.error.split(":", 1)[0] for r in failed})
        first = failed[0].error[:300].rstrip(".")
        return BackendFailure(
            f"{len(failed)} of {total} requests to {self.backend.name} ({self.backend.model}) failed at the "
            f"backend after its retries ({', '.join(reasons)}); first: {first}. Nothing is written for this "
            "step; the calls that succeeded are cached, so a re-run pays only for the rest."
        )

    def _fresh(self, completions: Sequence[Completion]) -> None:
        """Completions the backend just produced (not replayed from the cache), in the usage."""
        self.usage.calls += len(completions)
        prompt, completion = sum(c.prompt_tokens for c in completions), sum(c.completion_tokens for c in completions)
        self.usage.prompt_tokens += prompt
        self.usage.completion_tokens += completion
        if self.budget is not None:
            self.budget.spent += prompt + completion

    def _judge(self, request: LLMRequest, completion: Completion, attempts: int) -> LLMResponse:
        parsed, error = None, completion.error
        # A prompt that does not fit the model is this request's problem; any other transport error is the backend's.
        backend_failed = error is not None and not error.startswith("context_overflow")
        if error is None:
            if request.json_schema is not None:
                try:
                    parsed, error = parse_structured(completion.text, request.json_schema, completion.finish_reason)
                except Exception as exc:  # noqa: BLE001 - a parser's bug on one answer is that answer's reject
                    parsed, error = None, _parse_error(exc)
            elif not (completion.text or "").strip():
                error = "empty"
        return LLMResponse(
            request_id=request.request_id,
            text=completion.text,
            parsed=parsed,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_s=completion.latency_s,
            backend=self.backend.name,
            model=self.backend.model,
            cache_hit=completion.cache_hit,
            attempts=attempts,
            error=error,
            backend_failed=backend_failed,
        )


class _StreamedGeneration:
    """One `generate_batches` through a streaming backend: every request submitted at once (the backend's window
    bounds what is in flight), retries of invalid outputs submitted as their answers arrive, answers committed to
    the cache as they arrive, and the responses handed back batch by batch in request order.

    A commit is a Delta write (tens of ms): answers are committed once at least `batch_size` are waiting and a
    second has passed since the last commit, so at hundreds of answers a second the cache costs a few commits a
    second, not one per batch. A run that dies loses at most about a second of answers plus those in flight."""

    COMMIT_EVERY_S = 1.0

    def __init__(self, client: LLMClient, requests: Sequence[LLMRequest], batch_size: int):
        self.client = client
        self.requests = requests
        self.batch_size = max(1, batch_size)
        self.final: list[LLMResponse | None] = [None] * len(requests)
        self.attempts = [0] * len(requests)
        self.uncommitted: dict[str, Completion] = {}
        self.committed_at = time.monotonic()
        self.stream: Any = None

    def batches(self, open_stream: Callable[[], Any]) -> Iterator[list[LLMResponse]]:
        client, cache = self.client, self.client.cache
        keys = [request.cache_key(client.identity) for request in self.requests]
        self.cached = cache.lookup(keys) if cache is not None else {}
        bounds = [
            (lo, min(lo + self.batch_size, len(self.requests))) for lo in range(0, len(self.requests), self.batch_size)
        ]
        started = time.perf_counter()
        try:
            with open_stream() as stream:
                self.stream = stream
                for index, key in enumerate(keys):
                    self._ask(index, key)
                for lo, hi in bounds:
                    if client.over_budget():
                        return  # at a batch boundary; what has arrived is committed below
                    while any(response is None for response in self.final[lo:hi]):
                        (index, key), completion = stream.next()
                        self._answered(index, key, completion)
                    yield list(self.final[lo:hi])  # type: ignore[arg-type]
        finally:
            self._commit()
            if client.usage.calls:
                client.usage.backend_seconds += time.perf_counter() - started

    def _ask(self, index: int, key: str | None = None) -> None:
        request = _attempt_request(self.requests[index], self.attempts[index])
        key = key or request.cache_key(self.client.identity)
        if self.attempts[index] == 0:
            hit = self.cached.get(key)
        else:
            hit = self.client.cache.lookup([key]).get(key) if self.client.cache is not None else None
        if hit is None:
            self.stream.submit((index, key), request)
            return
        self.client.usage.cache_hits += 1
        self._settle(index, hit)

    def _answered(self, index: int, key: str, completion: Completion) -> None:
        completion = _encodable(completion)
        self.client._fresh([completion])
        self.uncommitted[key] = completion
        due = time.monotonic() - self.committed_at >= self.COMMIT_EVERY_S
        if len(self.uncommitted) >= self.batch_size and due:
            self._commit()
        self._settle(index, completion)

    def _settle(self, index: int, completion: Completion) -> None:
        client = self.client
        attempt = self.attempts[index]
        response = client._judge(self.requests[index], completion, attempt + 1)
        if not response.ok and attempt < client.max_attempts - 1 and _retryable(response.error):
            self.attempts[index] += 1
            client.usage.retries += 1
            self._ask(index)
            return
        if response.backend_failed:
            self._commit()  # what succeeded stays paid for
            raise client._backend_failure([response], len(self.requests))
        client._count(response)
        self.final[index] = response

    def _commit(self) -> None:
        if self.uncommitted and self.client.cache is not None:
            backend = self.client.backend
            self.client.cache.put(self.uncommitted, backend=backend.name, model=backend.model)
        self.uncommitted = {}
        self.committed_at = time.monotonic()


def _is_opener(backend: object) -> bool:
    """A function that opens a backend, as opposed to a backend (which has `complete`)."""
    return callable(backend) and not hasattr(backend, "complete")


def _attempt_request(request: LLMRequest, attempt: int) -> LLMRequest:
    if attempt == 0:
        return request
    # An explicit seed also for requests without one: otherwise the retry's cache key would equal the first
    # attempt's, and the cache would replay the very output being retried.
    return request.with_seed((request.sampling.seed or 0) + 1000 * attempt)


def _encodable(completion: Completion) -> Completion:
    """The completion with text that UTF-8 can hold: a server's JSON can carry a lone surrogate ("\\ud800"), which
    no column (the cache, a rejects table) can store; each becomes U+FFFD, and a split pair is joined."""
    text = completion.text
    if text is None:
        return completion
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return replace(completion, text=text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
    return completion


def _parse_error(exc: Exception) -> str:
    """The reject reason for an exception out of parsing one answer (which parse_structured is built not to raise)."""
    try:
        detail = str(exc)
    except Exception:  # noqa: BLE001
        detail = "(no message)"
    reason = f"parse_error: {type(exc).__name__}: {detail}"[:300]
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


def _retryable(error: str | None) -> bool:
    """Asking again cannot fix a prompt that does not fit the model's context."""
    return error is not None and not error.startswith("context_overflow")

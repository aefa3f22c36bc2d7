"""A streaming window of in-flight requests for served models (vLLM, any OpenAI-compatible server).

A server that batches continuously (vLLM runs up to `max_num_seqs` sequences at once) is kept busy only when that
many requests are in flight all the time. `RequestStream` runs the requests on an event loop in a background thread:
up to `window.limit` at once, each slot refilled the moment its answer arrives, with no barrier between the caller's
batches; answers come back in the order they finish, on a thread-safe queue.

`AdaptiveWindow` sizes the window from the server's own signal (additive increase, multiplicative decrease, as TCP
does): a 429 halves it, at most once per round trip, so a storm of 429s from one overload is one cut; every `limit`
answers without one widen it by one, back up to the configured maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from persona_hub_dagster.lib.llm.types import Completion, LLMRequest

# Answers one request; `attempt` counts the times it was sent back to the queue before (see Requeue).
Call = Callable[[LLMRequest, int], Awaitable[Completion]]
# Opens what answers one request (an HTTP client, say) on the stream's event loop; closed when the stream closes.
OpenCall = Callable[["AdaptiveWindow"], contextlib.AbstractAsyncContextManager[Call]]


class Requeue(Exception):
    """Raised by a call whose request the server turned away for now (429): the request leaves its slot, waits
    `delay` seconds outside the window, and goes back to the front of the queue. Holding the slot while waiting
    would keep the window full of requests the server cannot take."""

    def __init__(self, delay: float):
        super().__init__(f"asked to come back in {delay:.2f}s")
        self.delay = delay


class AdaptiveWindow:
    """How many requests may be in flight now."""

    def __init__(self, maximum: int, *, minimum: int = 1, adaptive: bool = True):
        if maximum < 1:
            raise ValueError("the window must allow at least one request in flight")
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.adaptive = adaptive
        self.limit = maximum
        self.cuts = 0
        self.throttles = 0
        self._responses = 0  # answers and 429s
        self._round_end = 0  # responses to wait for before another cut: those in flight at the last one
        self._credit = 0

    def throttled(self) -> None:
        """The server said it is overloaded (429)."""
        self.throttles += 1
        self._responses += 1
        if not self.adaptive or self._responses <= self._round_end:
            return  # the same overload episode as the last cut
        self._round_end = self._responses + self.limit
        self.limit = max(self.minimum, self.limit // 2)
        self._credit = 0
        self.cuts += 1

    def answered(self) -> None:
        self._responses += 1
        if self.limit < self.maximum and self._responses > self._round_end:
            self._credit += 1
            if self._credit >= self.limit:
                self.limit, self._credit = self.limit + 1, 0


class RequestStream:
    """Submit requests from any thread; take their answers, as they finish, from `next()`.

    Use as a context manager: leaving it cancels whatever is still in flight (those calls' answers are lost; the
    caller commits what it has before leaving)."""

    def __init__(self, open_call: OpenCall, window: AdaptiveWindow):
        self.window = window
        self._open_call = open_call
        self._answers: queue.Queue[tuple[Hashable, Completion] | BaseException] = queue.Queue()
        self._waiting: deque[tuple[Hashable, LLMRequest, int]] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="llm-request-stream", daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._call: Call | None = None
        self._failure: BaseException | None = None

    # ---------------------------------------------------------------------------------------- caller's thread

    def __enter__(self) -> RequestStream:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def submit(self, tag: Hashable, request: LLMRequest) -> None:
        self._loop.call_soon_threadsafe(self._enqueue, tag, request)

    def next(self, timeout: float | None = None) -> tuple[Hashable, Completion]:
        """The next answer to finish: (its tag, the completion). Raises queue.Empty after `timeout` seconds."""
        item = self._answers.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ---------------------------------------------------------------------------------------- the loop's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with self._opened() as call:
                self._call = call
                self._ready.set()
                await self._stop.wait()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except BaseException as exc:  # opening failed: the caller's __enter__ raises it
            self._failure = exc
            self._ready.set()

    def _opened(self) -> contextlib.AbstractAsyncContextManager[Call]:
        return self._open_call(self.window)

    def _enqueue(self, tag: Hashable, request: LLMRequest, attempt: int = 0) -> None:
        if attempt:
            self._waiting.appendleft((tag, request, attempt))  # it has waited longest
        else:
            self._waiting.append((tag, request, attempt))
        self._fill()

    def _fill(self) -> None:
        while self._waiting and len(self._tasks) < self.window.limit:
            tag, request, attempt = self._waiting.popleft()
            self._tasks.add(self._loop.create_task(self._answer(tag, request, attempt)))

    async def _answer(self, tag: Hashable, request: LLMRequest, attempt: int) -> None:
        try:
            completion = await self._call(request, attempt)
            self.window.answered()
            self._answers.put((tag, completion))
        except Requeue as again:
            self._loop.call_later(again.delay, self._enqueue, tag, request, attempt + 1)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug in the call, not a failed request: surface it to the caller
            self._answers.put(exc)
        finally:
            self._tasks.discard(asyncio.current_task())
        self._fill()  # the freed slot goes to the next waiting request at once

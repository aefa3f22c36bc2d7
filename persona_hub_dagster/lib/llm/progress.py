"""Progress of a stage's LLM calls while it runs: requests answered of those planned so far, cache hits, tokens/s
and an ETA, reported as a log line at an interval (the run's log in the UI) and to whoever subscribed (the CLI
draws a progress bar from it).

Stages plan their requests in rounds (Persona-to-Persona hop by hop, a task step by step), so the total grows as
they go: the line says "of N planned so far". Rates count answers that cost a call (cached ones come back at once),
and there is no ETA until ETA_AFTER of them have arrived: the first answer's rate says nothing about the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Called with every snapshot, from the thread the stage runs in (see `subscribe`).
Listener = Callable[["Snapshot"], None]
_LISTENERS: list[Listener] = []
ETA_AFTER = 5  # answers from the backend before an ETA is shown


@dataclass(frozen=True)
class Snapshot:
    label: str
    done: int
    planned: int
    cache_hits: int
    completion_tokens: int
    tokens_per_s: float
    eta_s: float | None  # None until ETA_AFTER answers came from the backend
    finished: bool = False
    answers_per_s: float = 0.0  # answers from the backend (not the cache) per second

    def line(self) -> str:
        share = f" ({100 * self.done // self.planned}%)" if self.planned else ""
        eta = f", ETA {duration(self.eta_s)}" if self.eta_s is not None and not self.finished else ""
        if self.finished:
            head = f"{self.label} done: {self.done} of {self.planned} requests{share}"
        else:
            head = f"{self.label} so far: {self.done} of {self.planned} requests planned so far{share}"
        return (
            f"{head}, {self.cache_hits} from the cache, {self.answers_per_s:.2f} answers/s, "
            f"{self.completion_tokens} tokens at {self.tokens_per_s:.1f} tokens/s{eta}"
        )


@contextlib.contextmanager
def subscribe(listener: Listener) -> Iterator[None]:
    """Receive every snapshot of every stage in this process while the block runs."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


class Progress:
    """One stage's progress. `report` (a log function) gets a line every `every_s` seconds and at the end;
    listeners get a snapshot at most every `notify_s`."""

    def __init__(
        self,
        label: str,
        *,
        report: Callable[[str], None] | None = None,
        every_s: float = 30.0,
        notify_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.report = report
        self.every_s = every_s
        self.notify_s = notify_s
        self.clock = clock
        self.started = clock()
        self.planned = 0
        self.done = 0
        self._cache_hits = 0
        self._fresh_done = 0
        self._tokens = 0
        self._reported = self.started
        self._notified = float("-inf")

    def plan(self, requests: int) -> None:
        self.planned += requests

    def answered(self, requests: int, *, cache_hits: int, completion_tokens: int, fresh: int) -> None:
        """`requests` more got their final response; the other numbers are the stage's totals so far."""
        self.done += requests
        self._cache_hits, self._tokens, self._fresh_done = cache_hits, completion_tokens, fresh
        now = self.clock()
        if self.report is not None and now - self._reported >= self.every_s:
            self._reported = now
            self.report(self.snapshot().line())
        if _LISTENERS and now - self._notified >= self.notify_s:
            self._notified = now
            self._notify(self.snapshot())

    def finish(self) -> Snapshot:
        snapshot = self.snapshot(finished=True)
        if self.report is not None and self.planned:
            self.report(snapshot.line())
        self._notify(snapshot)
        return snapshot

    def snapshot(self, finished: bool = False) -> Snapshot:
        elapsed = max(self.clock() - self.started, 1e-9)
        # The rate of answers that cost a call: cached ones come back at once and say nothing about the rest.
        remaining = self.planned - self.done
        rate = self._fresh_done / elapsed
        if remaining <= 0:
            eta = 0.0
        elif self._fresh_done >= ETA_AFTER:
            eta = remaining / rate
        else:
            eta = None
        return Snapshot(
            self.label,
            self.done,
            self.planned,
            self._cache_hits,
            self._tokens,
            self._tokens / elapsed,
            eta,
            finished,
            rate,
        )

    def _notify(self, snapshot: Snapshot) -> None:
        for listener in list(_LISTENERS):
            listener(snapshot)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

"""The response cache: every completion a backend returns is kept, so a crashed or retried run pays only for the
calls it has not made yet.

Storage: an append-only Delta table under the storage root, `<root>/_cache/llm_responses`, partitioned by
`namespace` (a stage and shard, e.g. `text_personas.sample`). Why this and not a key-value store:
- it lives wherever the data lives (a local folder, or S3 for a cluster) with no extra service to run;
- appends from concurrent runs never conflict in Delta, and each batch's entries land in one atomic commit, so a run
  killed mid-batch loses at most that batch's calls;
- a run reads only its own namespace's files (partition pruning): one scan when the namespace is first used, then
  lookups are in memory. Measured in bench/llm_cache.py (10^5 entries: see bench/RESULTS.md).
Memory is what the namespace holds: a shard's responses, which is what a resumed run needs anyway.

Keys hash (model identity, messages, sampling parameters including the seed, JSON schema): a changed prompt,
model or temperature is a miss, never a stale hit. Only completions are cached, not verdicts: a response rejected
by validation is re-validated on replay, so a fixed parser benefits from cached calls too. Transport failures
(timeouts, 5xx after retries) are not cached.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.storage import DeltaStore, TableNotFound

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("namespace", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_s", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("run_id", pa.string()),
    ]
)


def cache_namespace(*parts: str) -> str:
    """`cache_namespace("text_personas", "sample")` -> "text_personas.sample" (a valid partition value)."""
    namespace = ".".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p) for p in parts if p)
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(f"Invalid cache namespace {namespace!r}")
    return namespace


class ResponseCache:
    """Completions of one namespace, looked up by request key."""

    def __init__(self, store: DeltaStore, namespace: str = "default", *, run_id: str | None = None):
        if not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"Invalid cache namespace {namespace!r}; use cache_namespace(stage, shard)")
        self.store = store
        self.namespace = namespace
        self.run_id = run_id
        self._entries: dict[str, Completion] | None = None

    def lookup(self, keys: Iterable[str]) -> dict[str, Completion]:
        entries = self._load()
        return {key: entries[key] for key in keys if key in entries}

    def put(self, completions: Mapping[str, Completion], *, backend: str, model: str) -> None:
        """Record completions in one commit (transport errors are skipped)."""
        rows = {k: c for k, c in completions.items() if c.error is None and c.text is not None}
        if not rows:
            return
        now = datetime.now(UTC)
        table = pa.table(
            {
                "key": list(rows),
                "namespace": [self.namespace] * len(rows),
                "backend": [backend] * len(rows),
                "model": [model] * len(rows),
                "text": [c.text for c in rows.values()],
                "finish_reason": [c.finish_reason for c in rows.values()],
                "prompt_tokens": [c.prompt_tokens for c in rows.values()],
                "completion_tokens": [c.completion_tokens for c in rows.values()],
                "latency_s": [c.latency_s for c in rows.values()],
                "created_at": [now] * len(rows),
                "run_id": [self.run_id] * len(rows),
            },
            schema=CACHE_SCHEMA,
        )
        self.store.append(tables.LLM_RESPONSES, table, partition_by=["namespace"])
        self._load().update({k: replace(c, cache_hit=True) for k, c in rows.items()})

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> dict[str, Completion]:
        if self._entries is None:
            self._entries = {}
            try:
                frame = (
                    pl.scan_delta(self.store.delta_table(tables.LLM_RESPONSES))
                    .filter(pl.col("namespace") == self.namespace)
                    .select("key", "text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s")
                    .collect()
                )
            except TableNotFound:
                return self._entries
            for key, text, finish, prompt, completion, latency in frame.iter_rows():
                # A key written twice (two runs racing on the same request) holds the same kind of answer; keep one.
                self._entries[key] = Completion(
                    text, finish, prompt or 0, completion or 0, latency or 0.0, cache_hit=True
                )
        return self._entries

"""Knowing the cost before paying it: for one shard, per stage, the LLM calls, prompt and completion tokens, time and
money, before anything runs.

Each stage declares its own estimator next to its declaration (`Stage.estimate`: fan-out, hops, personas sampled,
solutions per item, turns are its settings); this module only walks them in the job's order, carrying the rows each
stage will write to the stages that read them (`Estimating.rows`). What goes in:
- the shard's texts (from raw_text when it is materialized, else read and cleaned from the registered file), whose
  tokens in a Text-to-Persona prompt are counted exactly;
- each template's own tokens, rendered with empty inputs;
- per-call tokens of earlier runs with the same model (the response cache keeps every call's prompt and completion
  tokens): once a stage has run on any shard, its answers' length is known, not guessed; before that, the stage's
  declared typical answer (`typical`, measured on the embedded model; a bigger model writes longer answers);
- the backend's speed: the embedded model's, from a short calibration on this machine (cached under the storage root);
  a served model's, from `max_in_flight` requests at a time of a latency you give.
Assumed: every output is accepted (no retries) and the hub keeps every candidate, so calls are an upper bound for the
stages after a lossy one; bench/RESULTS.md records the error against real runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import polars as pl

from persona_hub_dagster.lib import filesystems, prompts, tables
from persona_hub_dagster.lib.llm.cache import cache_namespace
from persona_hub_dagster.lib.llm.progress import duration
from persona_hub_dagster.lib.locations import join_location
from persona_hub_dagster.lib.storage import DeltaStore, TableNotFound

PERSONA_TOKENS = 40  # a persona in a prompt (a fine-grained one-sentence description)
ITEM_TOKENS = 150  # a synthetic item in an evaluation's prompt, before any run of its task says otherwise
CHAT_MARKERS = 12  # the chat format's role markers around a system and a user message
TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    rows: Mapping[str, int] = field(default_factory=dict)  # table -> rows it will write for the shard
    seconds: float | None = None  # filled by `timed`

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Estimating:
    """What an estimator is given: the shard's texts, the rows estimated so far, token counts and past answers."""

    texts: pl.DataFrame  # the shard's texts (text_id, text) as raw_text holds them
    count: TokenCounter
    model: str  # the configured model's identity (past answers are counted for it only)
    store: DeltaStore | None = None
    rows: dict[str, int] = field(default_factory=dict)
    given_personas: bool = False
    past: dict[str, tuple[float, float]] | None = None  # stage -> mean (prompt, completion) tokens per call
    shard: str | None = None  # the shard estimated, where its tables may already hold what a stage would read
    embedder: Any = None  # a lib.embeddings embedder, for a synthesis setting's query

    def template_tokens(self, name: str) -> int:
        """A template's own tokens (system and user, and the chat format's markers), its inputs empty."""
        template = prompts.load(name)
        system, user = template.render(**{variable: "" for variable in template.variables})
        return self.count(system or "") + self.count(user) + CHAT_MARKERS

    def request_tokens(self, request) -> int:
        """A rendered request's tokens (an LLMRequest's messages)."""
        return sum(self.count(message["content"]) for message in request.messages) + CHAT_MARKERS

    def programs_run(self) -> bool:
        """Whether model-written programs run here (eval/math asks for none where they cannot)."""
        from persona_hub_dagster.lib.evaluation.sandbox import SandboxUnavailable, program_execution

        try:
            return program_execution().runs
        except SandboxUnavailable:  # fail-closed mode: the step would fail; price it as if they ran
            return True

    def hub_personas(self) -> int:
        """The shard's hub: known once it is built; before that every candidate (an upper bound: dedup drops a
        corpus-dependent share)."""
        if tables.PERSONA_HUB.name in self.rows:
            return self.rows[tables.PERSONA_HUB.name]
        return self.rows.get(tables.TEXT_PERSONAS.name, 0) + self.rows.get(tables.EXPANDED_PERSONAS.name, 0)

    def drawn_personas(self, settings: Any) -> int:
        """The personas a synthesis task's settings draw: counted on the shard's hub where it is built (its query,
        clusters and filters applied); before that, the hub's estimate up to `personas`."""
        if self.store is not None and self.shard is not None and self.store.exists(tables.PERSONA_HUB):
            if self.store.row_count(tables.PERSONA_HUB, [self.shard]) and (self.embedder or not settings.query):
                from persona_hub_dagster.lib.synthesis.generate import draw_personas

                hub = self.store.scan(tables.PERSONA_HUB, [self.shard]).collect()
                return draw_personas(hub, settings, self.store, self.shard, self.embedder).personas.height
        hub = self.hub_personas()
        return hub if settings.personas is None else min(settings.personas, hub)

    def items(self, task_table: str, per_item: int, *, template: str, extra: float = 0.0):
        """For an evaluation: the items it gets, its calls, and a call's prompt (its template, the item as the task's
        answers run long, and `extra` more)."""
        items = self.rows.get(task_table, 0)
        item_tokens = self.per_call(task_table, prompt=0, completion=ITEM_TOKENS, max_tokens=None)[1]
        return items, items * per_item, self.template_tokens(template) + item_tokens + extra

    def per_call(
        self, stage: str, *, prompt: float, completion: float, max_tokens: int | None, prompt_from_past: bool = True
    ) -> tuple[float, float]:
        """Tokens of one call of `stage`: earlier runs' means with this model when the cache has any, else the given
        prompt and the declared typical completion (never above max_tokens)."""
        if self.past is None:
            self.past = past_tokens(self.store, self.model) if self.store is not None else {}
        typical = min(completion, max_tokens) if max_tokens else completion
        past = self.past.get(cache_namespace(stage))
        if past is None:
            return prompt, typical
        return (past[0] if prompt_from_past else prompt), past[1]

    def cost(
        self,
        stage: str,
        calls: int,
        *,
        prompt: float,
        completion: float,
        max_tokens: int | None,
        rows: Mapping[str, int] | None = None,
        prompt_from_past: bool = True,
    ) -> StageEstimate:
        """`calls` calls of `prompt` and `completion` tokens each (or the past means), writing `rows` (table name ->
        rows), which later estimators read from `self.rows`."""
        per_prompt, per_completion = self.per_call(
            stage, prompt=prompt, completion=completion, max_tokens=max_tokens, prompt_from_past=prompt_from_past
        )
        self.rows.update(rows or {})
        return StageEstimate(stage, calls, round(calls * per_prompt), round(calls * per_completion), dict(rows or {}))


def past_tokens(store: DeltaStore, model: str) -> dict[str, tuple[float, float]]:
    """Per stage (as its cache namespace names it), the mean prompt and completion tokens of the calls the response
    cache holds for `model`."""
    try:
        frame = (
            pl.scan_delta(store.delta_table(tables.LLM_RESPONSES))
            .filter(pl.col("model") == model)
            .select("namespace", "prompt_tokens", "completion_tokens")
            .collect()
        )
    except (TableNotFound, OSError):
        return {}
    if frame.is_empty():
        return {}
    means = (
        frame.with_columns(stage=pl.col("namespace").str.split(".").list.first())
        .group_by("stage")
        .agg(pl.col("prompt_tokens").mean(), pl.col("completion_tokens").mean())
    )
    return {stage: (float(p), float(c)) for stage, p, c in means.iter_rows() if p and c}


# ------------------------------------------------------------------------------------------------------- tokens


@cache
def token_counter() -> TokenCounter:
    """Tokens as the embedded model's tokenizer counts them (its vocabulary alone loads in well under a second);
    where it is not installed, ~4 characters a token (~1 for CJK and Thai, which BPE vocabularies split finely)."""
    try:
        from llama_cpp import Llama

        from persona_hub_dagster.lib.llm.backends.llama_cpp import packaged_model_path

        with _quiet_stderr():  # llama.cpp prints a context-size notice from C even when asked not to
            vocabulary = Llama(model_path=str(packaged_model_path()), vocab_only=True, verbose=False)
    except Exception:  # noqa: BLE001 - any missing piece means the fallback
        return approximate_tokens
    return lambda text: len(vocabulary.tokenize(text.encode("utf-8"), add_bos=False, special=False))


@contextlib.contextmanager
def _quiet_stderr():
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_DENSE = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def approximate_tokens(text: str) -> int:
    dense = len(_DENSE.findall(text))
    return dense + math.ceil((len(text) - dense) / 4)


def estimate_stages(stages: Sequence[tuple[Any, Any]], shard: Estimating) -> list[StageEstimate]:
    """`stages`: (Stage, its settings) in the job's order; each declared estimator sees the rows of those before."""
    return [stage.estimate(settings, shard) for stage, settings in stages if stage.estimate is not None]


# --------------------------------------------------------------------------------------------------------- time


@dataclass(frozen=True)
class Speed:
    """How fast the backend answers: per-call time = prompt / prefill + completion / decode, `parallel` at once."""

    prefill_tokens_s: float
    decode_tokens_s: float
    parallel: int = 1
    latency_s: float | None = None  # a served model: seconds per call, whatever its tokens
    source: str = ""

    def seconds(self, estimate: StageEstimate) -> float:
        if self.latency_s is not None:
            return math.ceil(estimate.calls / self.parallel) * self.latency_s if estimate.calls else 0.0
        work = estimate.prompt_tokens / self.prefill_tokens_s + estimate.completion_tokens / self.decode_tokens_s
        return work / self.parallel


# Two prompts that differ from their first word (no shared prefix for the backend to reuse) and ask for a long answer.
CALIBRATION_PROMPTS = (
    "Harbour logistics: " + "describe the people who plan berths, cranes and tides at a busy container port. " * 6,
    "Alpine dairies: " + "describe the people who make cheese, herd cows and sell at valley markets in summer. " * 6,
)
CALIBRATION_TOKENS = 64


def calibrate_embedded(backend, store: DeltaStore, identity: str) -> Speed:
    """The embedded model's prefill and decode speed on this machine from two calls (~10 s), measured once per model
    and kept under the storage root (`_calibration/`); delete the file to measure again (a loaded machine measures
    slow)."""
    location = join_location(store.root, "_calibration", re.sub(r"[^A-Za-z0-9._-]+", "-", identity) + ".json")
    try:
        with filesystems.open_binary(location) as handle:
            saved = json.loads(handle.read())
        return Speed(saved["prefill_tokens_s"], saved["decode_tokens_s"], source=f"calibrated, {location}")
    except (OSError, ValueError, KeyError):
        pass
    from persona_hub_dagster.lib.llm.types import LLMRequest, SamplingParams

    def timed(prompt: str, max_tokens: int) -> tuple[float, int, int]:
        request = LLMRequest.chat(prompt, sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0))
        started = time.perf_counter()
        (completion,) = backend.complete([request])
        return time.perf_counter() - started, completion.prompt_tokens, completion.completion_tokens

    backend.complete([LLMRequest.chat("Hello.", sampling=SamplingParams(max_tokens=1))])  # load and warm up
    prefill_s, prompt_tokens, _ = timed(CALIBRATION_PROMPTS[0], 1)
    both_s, second_prompt, generated = timed(CALIBRATION_PROMPTS[1], CALIBRATION_TOKENS)
    prefill = prompt_tokens / max(prefill_s, 1e-6)
    decode_s = max(both_s - second_prompt / prefill, 1e-3)
    decode = max(generated - 1, 1) / decode_s
    filesystems.write_bytes(
        location, json.dumps({"prefill_tokens_s": prefill, "decode_tokens_s": decode, "model": identity}).encode()
    )
    return Speed(prefill, decode, source=f"calibrated now, kept at {location}")


def timed(estimates: Sequence[StageEstimate], speed: Speed) -> list[StageEstimate]:
    return [StageEstimate(**{**e.__dict__, "seconds": speed.seconds(e)}) for e in estimates]


# -------------------------------------------------------------------------------------------------------- table


def table(estimates: Sequence[StageEstimate], *, price_per_million: float | None = None) -> str:
    """The estimate as a table with totals (and money, at a price per million tokens)."""
    header = f"  {'stage':<28} {'calls':>8} {'prompt tok':>11} {'completion tok':>14} {'time':>9}"
    header += f" {'cost':>9}" if price_per_million is not None else ""
    lines = [header]
    for e in [*estimates, total(estimates)]:
        line = f"  {e.stage:<28} {e.calls:>8,} {e.prompt_tokens:>11,} {e.completion_tokens:>14,} "
        line += f"{duration(e.seconds) if e.seconds is not None else '-':>9}"
        if price_per_million is not None:
            line += f" {'$' + format(e.tokens * price_per_million / 1e6, ',.2f'):>9}"
        lines.append(line)
    return "\n".join(lines)


def total(estimates: Sequence[StageEstimate]) -> StageEstimate:
    seconds = [e.seconds for e in estimates if e.seconds is not None]
    return StageEstimate(
        "total",
        sum(e.calls for e in estimates),
        sum(e.prompt_tokens for e in estimates),
        sum(e.completion_tokens for e in estimates),
        seconds=sum(seconds) if seconds else None,
    )

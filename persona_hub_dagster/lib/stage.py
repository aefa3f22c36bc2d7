"""The stage framework: a stage's declaration, what running it takes and returns, turning a prompt template into
requests, and model answers into rows or rejections.

A stage is one step of the method that writes its tables together (Text-to-Persona, a synthesis task, an
evaluation), declared once as a `Stage`: the tables it writes (`StageTables`, from the catalog), the tables it reads,
its settings (a frozen dataclass whose fields, defaults and `doc`s are the run config defs/ builds), what goes into
its code version, and `run`, which turns one partition of its inputs into its tables. defs/stages.py builds the
Dagster asset of every stage from that declaration alone.

Inside `run`, a stage that asks a model plans `Planned` requests, each carrying the ids its output rows need (text_id,
persona_id, ...); `LLMClient.generate_batches` answers them batch by batch (each batch one cache commit, so a killed run
resumes where it stopped); the stage's parser turns an accepted answer into rows, and everything else, the raw text
included, becomes a row of the stage's rejects table with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMRequest, LLMResponse, SamplingParams
from persona_hub_dagster.lib.prompts import PromptTemplate
from persona_hub_dagster.lib.storage import DeltaStore, capped
from persona_hub_dagster.lib.tables import StageTables, Table

REJECTS_SCHEMA = {
    "shard": pl.String,
    "stage": pl.String,
    "subject_id": pl.String,  # what the request was about: a text_id, a persona_id, an item_id
    "request": pl.String,  # the request's ids and parameters, as JSON
    "raw_output": pl.String,  # what the model said, verbatim (null when it said nothing; cut at RAW_LIMIT_CHARS)
    "raw_output_chars": pl.Int64,  # its full length
    "raw_output_hash": pl.String,  # the content hash of the full output, where it was cut
    "reason": pl.String,
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
    "rejected_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class StageCall:
    """What a stage's `run` gets besides its inputs and settings: the model, the storage, which partition, and the
    other resources it declared."""

    client: LLMClient | None  # the `llm` or `judge` resource's client; None for a stage that declares neither
    store: DeltaStore
    shard: str | None  # None: an unpartitioned stage (one table across shards)
    run_id: str
    batch_size: int = 32
    embedder: Any = None  # `embeddings`: a lib.embeddings.LazyEmbedder
    benchmarks: Sequence[Any] = ()  # `benchmarks`: lib.evaluation.contamination.Benchmark, loaded


class Markdown(str):
    """Metadata text the UI renders as Markdown (a table of clusters, an inline image)."""


@dataclass
class StageResult:
    """A stage's tables for the partition (every table of its catalog entry) and what to report about them."""

    tables: dict[Table, pl.DataFrame]
    metadata: dict[str, Any] = field(default_factory=dict)  # numbers, lists, dicts: on the main table's materialization


@dataclass(frozen=True)
class StageWarning:
    """Something about a stage's result a person should see without failing the step (the UI shows it as a warning
    check on the stage's main table): `problem(metadata)` says what, from the result's metadata, or None."""

    name: str
    description: str
    problem: Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Stage:
    """A stage's declaration: everything defs/ needs to build its asset, and `run`, which does its work. Running it
    is a `StageCall` in, a `StageResult` out; a stage that asks a model keeps the `Provenance` of every row."""

    writes: StageTables  # the catalog entry: the tables it writes, main table first
    op: str  # the step's name (run config `ops: {<op>: {config: ...}}`)
    settings: type  # a frozen dataclass of lib.settings.setting fields; its defaults are the stage's defaults
    run: Callable[[Mapping[Table, pl.LazyFrame], StageCall, Any], StageResult]
    prompts: Callable[[Any], Sequence[str]]  # settings -> the prompt versions it renders
    samplings: Callable[[Any], Sequence[SamplingParams]]  # settings -> the sampling of its requests
    version_extra: Callable[[Any], tuple] = lambda settings: ()  # anything else that changes its output
    reads: tuple[Table, ...] = ()  # loaded for `run`: the run's partition of each (all of an unpartitioned one)
    uses: tuple[Table, ...] = ()  # also upstream, read by `run` itself when its settings need them
    resources: tuple[str, ...] = ("llm",)  # llm | judge (the model it calls, if any), embeddings, benchmarks
    lineage: Mapping[str, tuple[tuple[Table, str], ...]] = field(default_factory=dict)  # main table's column deps
    warnings: tuple[StageWarning, ...] = ()  # checked on every result
    # settings, Estimating -> StageEstimate: its calls and tokens for a shard before it runs (lib/estimate.py)
    estimate: Callable[[Any, Estimating], StageEstimate] | None = None

    @property
    def name(self) -> str:
        """Its main table's name: the asset key, the `stage` column of its rejects, its response cache's namespace."""
        return self.writes.name

    @property
    def table(self) -> Table:
        """Its main table."""
        return self.writes.table

    @property
    def rejects(self) -> Table | None:
        return self.writes.rejects

    @property
    def partitioned(self) -> bool:
        return self.writes.partitioned

    def code_version(self, settings: Any, model_identity: str) -> str:
        """`<prompt versions>-<hash of model, sampling and the rest>`: editing a template, switching the model or
        changing a default marks this stage's materializations stale in the UI (and only this stage's)."""
        sampling = [s.as_dict() for s in self.samplings(settings)]
        digest = content_id(repr((model_identity, sampling, self.version_extra(settings))))[:8]
        return f"{','.join(self.prompts(settings))}-{digest}"


def same_columns(table: Table, *columns: str) -> dict[str, tuple[tuple[Table, str], ...]]:
    """Column lineage for columns carried over unchanged from `table`."""
    return {column: ((table, column),) for column in columns}


def rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


@dataclass(frozen=True)
class Planned:
    """One request and the ids its rows will carry."""

    subject_id: str
    request: LLMRequest
    keys: Mapping[str, Any] = field(default_factory=dict)


class Rejected(ValueError):
    """Raised by a parser for an answer that is valid JSON but not usable; the message is the reason."""


@dataclass
class RowsAndRejects:
    """What a batch of planned requests came to: the rows parsed from accepted answers, and the rejects."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: RowsAndRejects) -> None:
        self.rows.extend(other.rows)
        self.rejects.extend(other.rejects)


@dataclass(frozen=True)
class Provenance:
    """Who produced the rows (the stage, its partition, the run, the model and the prompt): recorded in each of them
    and in each reject."""

    stage: str
    shard: str | None
    run_id: str
    model: str
    prompt_version: str

    def stamp(self) -> dict[str, Any]:
        return {"shard": self.shard, "model": self.model, "prompt_version": self.prompt_version, "run_id": self.run_id}


def chat_request(
    template: PromptTemplate,
    *,
    sampling: SamplingParams,
    json_schema: Mapping[str, Any] | None,
    request_id: str,
    **variables: object,
) -> LLMRequest:
    system, user = template.render(**variables)
    return LLMRequest.chat(user, system=system, sampling=sampling, json_schema=json_schema, request_id=request_id)


def run_requests(
    client: LLMClient,
    planned: Sequence[Planned],
    parse: Callable[[Planned, LLMResponse], Iterable[dict[str, Any]]],
    provenance: Provenance,
    *,
    batch_size: int,
) -> RowsAndRejects:
    """Answer every planned request; parse accepted answers into rows, keep the rest as rejections."""
    output = RowsAndRejects()
    if not planned:
        return output
    answered = 0
    for responses in client.generate_batches([p.request for p in planned], batch_size):
        for item, response in zip(planned[answered : answered + len(responses)], responses, strict=True):
            if not response.ok:
                output.rejects.append(reject_row(provenance, item, response.text, response.error))
                continue
            try:
                rows = list(parse(item, response))
            except Rejected as exc:
                output.rejects.append(reject_row(provenance, item, response.text, str(exc)))
                continue
            output.rows.extend({**item.keys, **row, **provenance.stamp()} for row in rows)
        answered += len(responses)
    return output


def reject_row(provenance: Provenance, item: Planned, raw_output: str | None, reason: str | None) -> dict[str, Any]:
    return {
        "shard": provenance.shard,
        "stage": provenance.stage,
        "subject_id": item.subject_id,
        "request": json.dumps(dict(item.keys), sort_keys=True, default=str),
        "raw_output": raw_output,
        "reason": reason or "unknown",
        "model": provenance.model,
        "prompt_version": provenance.prompt_version,
        "run_id": provenance.run_id,
        "rejected_at": datetime.now(UTC),
    }


# For a table left empty by its rejects: what to change, by reject reason (the part before the colon).
_STRONGER_MODEL = "a stronger model (PERSONA_HUB_LLM_MODEL, or a served one: PERSONA_HUB_LLM_BASE_URL)"
REJECT_ADVICE = {
    "truncated": "raise the stage's max_tokens: the answers were cut off",
    "context_overflow": "fewer shots or zero_shot prompting, or a model with a longer context",
    "invalid_json": f"{_STRONGER_MODEL}: small models often break the answer's JSON",
    "schema_mismatch": f"{_STRONGER_MODEL}: the answers did not have the required fields",
    "too_deep": f"{_STRONGER_MODEL}, or a lower temperature: the answers nested brackets without end",
    "number_too_large": f"{_STRONGER_MODEL}, or a lower temperature: the answers wrote numbers no column holds",
    "duplicate_key": f"{_STRONGER_MODEL}: the answers gave a field twice, so which value was meant is unknown",
    "parse_error": "reporting a bug with one of the rejects: the parser failed on an answer instead of judging it",
    "placeholder_echo": f"few_shot prompting (examples instead of a format), or {_STRONGER_MODEL}",
    "too_short": f"few_shot or persona_few_shot prompting with more shots, or {_STRONGER_MODEL}",
    "meta_talk": _STRONGER_MODEL,
    "states_answer": _STRONGER_MODEL,
    "contains_solution": _STRONGER_MODEL,
}


def empty_table_explanation(reasons: Sequence[str], *, top: int = 3) -> str:
    """Why a stage wrote no rows, from its rejects' reasons: the most frequent ones with counts, and what would help."""
    if not reasons:
        return "no rows and no rejects: nothing was asked (an empty input, or settings that sample nothing)"
    counts = Counter(reason.split(":", 1)[0] for reason in reasons)
    parts = []
    for reason, count in counts.most_common(top):
        advice = REJECT_ADVICE.get(reason, _STRONGER_MODEL)
        parts.append(f"{reason} ×{count} (try {advice})")
    more = len(counts) - top
    tail = f"; and {more} other reason{'s' if more > 1 else ''}" if more > 0 else ""
    return f"every output was rejected: {'; '.join(parts)}{tail}"


def request_keys(reject: Mapping[str, Any]) -> dict[str, Any]:
    """The ids a reject row's request carried (what its `Planned.keys` held)."""
    return json.loads(reject["request"])


def rejects_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={k: v for k, v in REJECTS_SCHEMA.items() if not k.startswith("raw_output_")})
    return capped(frame, "raw_output").select(list(REJECTS_SCHEMA))


def frame(rows: list[dict[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Rows as a frame with exactly the stage's columns, also when there are none."""
    return pl.DataFrame([{name: row.get(name) for name in schema} for row in rows], schema=dict(schema))

"""Training-ready releases: for one task, the items of every shard that passed their evaluation and are neither
near-duplicates nor contaminated, with their persona and lineage ids, split deterministically into train and test,
in the Hugging Face datasets layout:

    data/{train,test}-00000-of-00001.parquet   every column, `messages` included
    jsonl/{train,test}.jsonl                   every column but `messages`, one JSON object per line
    chat/{train,test}.jsonl                    {"messages": [...]} per line
    README.md                                  the dataset card (YAML header, how it was made)

The `datasets` library reads the folder from local files (its "parquet" builder on data/*.parquet, or the folder
itself, whose card names the configs); nothing is fetched from a hub.
The split is a hash of the item id (the same item always lands in the same split, across re-runs and new shards).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.locations import join_location
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

FORMATS = ("parquet", "jsonl", "chat")
LINEAGE_COLUMNS = ("source", "text_id", "parent_persona_id", "root_persona_id", "hop")
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
TASK_CATEGORIES = {
    "math": ["question-answering", "text-generation"],
    "reasoning": ["question-answering", "text-generation"],
    "instructions": ["text-generation"],
    "conversations": ["text-generation"],
    "knowledge": ["text-generation"],
    "npc": ["text-generation"],
    "tools": ["text-generation"],
}


@dataclass(frozen=True)
class ReleaseSettings:
    test_fraction: float = setting(0.1, "Share of items in the test split (by a hash of the item id).")
    require_contamination_check: bool = setting(
        False, "true: release nothing that was not checked against a benchmark (false: release it, and say so)."
    )

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1)")


@dataclass
class Release:
    task: str
    rows: pl.DataFrame  # the released items, with `split` and `messages`
    considered: int  # items in synthetic/<task>
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> items left out
    pass_rates: dict[str, float] = field(default_factory=dict)  # shard -> eval pass rate
    contamination_checked: bool = False
    models: list[str] = field(default_factory=list)
    prompt_versions: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def counts(self) -> dict[str, int]:
        return {split: int((self.rows["split"] == split).sum()) for split in ("train", "test")}

    def splits(self) -> list[str]:
        """The splits that have items."""
        return [split for split, n in self.counts().items() if n]

    def per_shard(self) -> dict[str, int]:
        return dict(self.rows.group_by("shard").len().sort("shard").iter_rows()) if self.rows.height else {}


def split_of(item_id: str, test_fraction: float) -> str:
    return "test" if int(item_id[:8], 16) / 0xFFFFFFFF < test_fraction else "train"


def build(store: DeltaStore, task: SynthesisTask, settings: ReleaseSettings | None = None) -> Release:
    settings = settings or ReleaseSettings()
    synthetic, evaluated = task.stage.table, tables.evaluation(task.name, "").table
    if not store.exists(synthetic) or not store.exists(evaluated):
        missing = synthetic if not store.exists(synthetic) else evaluated
        raise LookupError(f"{missing.name} has not been materialized: materialize it before releasing {task.name}")
    items = store.read(synthetic)
    evals = store.read(evaluated).select(
        "item_id", "shard", "passed", "duplicate_of", "contaminated", *(["answer"] if task.name == "math" else [])
    )
    joined = items.join(evals, on=["item_id", "shard"], how="left")
    checked = bool(joined["contaminated"].is_not_null().any())
    dropped = {
        "not_evaluated": int(joined["passed"].is_null().sum()),
        "failed_evaluation": int((joined["passed"] == False).sum()),  # noqa: E712 (a column, not a bool)
    }
    keep = joined.filter(pl.col("passed").fill_null(False))
    dropped["near_duplicate"] = int(keep["duplicate_of"].is_not_null().sum())
    keep = keep.filter(pl.col("duplicate_of").is_null())
    dropped["contaminated"] = int(keep["contaminated"].fill_null(False).sum())
    keep = keep.filter(~pl.col("contaminated").fill_null(False))
    if settings.require_contamination_check:
        dropped["not_checked_for_contamination"] = int(keep["contaminated"].is_null().sum())
        keep = keep.filter(pl.col("contaminated").is_not_null())
    hub = _personas(store)
    keep = keep.join(hub, on=["persona_id", "shard"], how="left")
    if task.name == "math":
        keep = keep.join(_math_solutions(store), on=["item_id", "shard"], how="left")
    messages = [task.chat(row) for row in keep.iter_rows(named=True)] if task.chat else [[] for _ in range(keep.height)]
    rows = (
        keep.drop("messages", strict=False)
        .with_columns(
            split=pl.Series([split_of(i, settings.test_fraction) for i in keep["item_id"]], dtype=pl.String),
            messages=pl.Series(messages, dtype=pl.List(MESSAGE)),
        )
        .select(
            "item_id",
            "split",
            "shard",
            "persona_id",
            "persona",
            *LINEAGE_COLUMNS,
            "prompting",
            *[c for c in task.columns if c != "messages"],  # a conversation's messages are the chat format already
            "messages",
            "model",
            "prompt_version",
        )
    )
    pass_rates = {
        shard: round(float(rate), 4)
        for shard, rate in joined.group_by("shard").agg(pl.col("passed").fill_null(False).mean()).sort("shard").rows()
    }
    return Release(
        task=task.name,
        rows=rows.sort("split", "item_id"),
        considered=items.height,
        dropped=dropped,
        pass_rates=pass_rates,
        contamination_checked=checked,
        models=sorted(set(items["model"].drop_nulls())),
        prompt_versions=sorted(set(items["prompt_version"].drop_nulls())),
    )


def lineage(task: SynthesisTask) -> dict[str, tuple[tuple[tables.Table, str], ...]]:
    """Column lineage of release/<task>: items from synthetic/<task>, personas and their ids from the hub, the
    split from the item id, messages from the item (and, for math, the verified solution)."""
    synthetic, hub = task.stage.table, tables.PERSONA_HUB
    deps: dict[str, tuple[tuple[tables.Table, str], ...]] = {
        column: ((synthetic, column),)
        for column in ("item_id", "shard", "persona_id", "prompting", "model", "prompt_version", *task.columns)
    }
    deps.update({column: ((hub, column),) for column in ("persona", *LINEAGE_COLUMNS)})
    deps["split"] = ((synthetic, "item_id"),)
    deps["messages"] = tuple((synthetic, c) for c in task.columns) + (
        ((tables.EVAL_MATH_SOLUTIONS, "solution"),) if task.name == "math" else ()
    )
    return deps


def _personas(store: DeltaStore) -> pl.DataFrame:
    hub = store.read(tables.PERSONA_HUB)
    for column in LINEAGE_COLUMNS:
        if column not in hub.columns:
            hub = hub.with_columns(pl.lit(None, dtype=pl.Int32 if column == "hop" else pl.String).alias(column))
    return hub.select("persona_id", "shard", "persona", *LINEAGE_COLUMNS).unique(["persona_id", "shard"])


def _math_solutions(store: DeltaStore) -> pl.DataFrame:
    """For each verified problem, a solution that reached the agreed answer: a step-by-step one when there is one."""
    if not store.exists(tables.EVAL_MATH_SOLUTIONS):
        return pl.DataFrame(schema={"item_id": pl.String, "shard": pl.String, "solution": pl.String})
    agreed = store.read(tables.EVAL_MATH).select("item_id", "shard", agreed=pl.col("answer"))
    solutions = (
        store.read(tables.EVAL_MATH_SOLUTIONS)
        .join(agreed, on=["item_id", "shard"])
        .filter(pl.col("answer") == pl.col("agreed"))
        .sort("item_id", pl.col("kind") != "reasoning", "solution_index")
        .unique(["item_id", "shard"], keep="first", maintain_order=True)
    )
    text = (
        pl.when(pl.col("kind") == "reasoning")
        .then(pl.col("output") + pl.lit("\n\nAnswer: ") + pl.col("raw_answer"))
        .otherwise(pl.lit("```python\n") + pl.col("output") + pl.lit("\n```\n\nAnswer: ") + pl.col("answer"))
    )
    return solutions.select("item_id", "shard", solution=text)


# ---------------------------------------------------------------------------------------------------- writing


def write(release: Release, location: str, formats: tuple[str, ...] = FORMATS) -> dict[str, str]:
    """Write the release under `location` (a folder or an object-store prefix), replacing what was there.
    Returns {relative path: location} of every file written."""
    filesystems.delete_dir(location)
    written: dict[str, str] = {}
    for split in release.splits():  # an empty split gets no file (datasets cannot load one)
        part = release.rows.filter(pl.col("split") == split)
        if "parquet" in formats:
            buffer = io.BytesIO()
            part.write_parquet(buffer)
            written[f"data/{split}-00000-of-00001.parquet"] = buffer.getvalue()
        if "jsonl" in formats:
            written[f"jsonl/{split}.jsonl"] = _jsonl(part.drop("messages").to_dicts())
        if "chat" in formats:
            written[f"chat/{split}.jsonl"] = _jsonl({"messages": m} for m in part["messages"].to_list())
    written["README.md"] = dataset_card(release, formats).encode("utf-8")
    return {path: filesystems.write_bytes(join_location(location, path), data) for path, data in written.items()}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode("utf-8")


def dataset_card(release: Release, formats: tuple[str, ...] = FORMATS) -> str:
    counts, total = release.counts(), release.rows.height
    size = (
        "n<1K" if total < 1_000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    )
    data_files = "\n".join(f"      - split: {s}\n        path: data/{s}-*" for s in release.splits())
    header = (
        "---\n"
        'license: ""  # fill in: the licence of your corpus and of the model\'s outputs decide what this can be\n'
        f"task_categories:\n{''.join(f'  - {c}' + chr(10) for c in TASK_CATEGORIES[release.task])}"
        "language:\n  - en\n"
        f"size_categories:\n  - {size}\n"
        "tags:\n  - synthetic\n  - persona-hub\n"
        + (
            f"configs:\n  - config_name: default\n    data_files:\n{data_files}\n"
            if "parquet" in formats and data_files
            else ""
        )
        + "---\n"
    )
    dropped = ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in release.dropped.items())
    shards = "\n".join(f"| {s} | {n} | {release.pass_rates.get(s, 0):.1%} |" for s, n in release.per_shard().items())
    contamination = (
        "checked against the configured benchmarks; flagged items are left out"
        if release.contamination_checked
        else "**not checked** (no benchmark was configured): check before training on it"
    )
    return f"""{header}
# Persona Hub synthetic data: {release.task}

Synthetic `{release.task}` items generated with the Persona Hub method (Chan et al., 2024, *Scaling Synthetic Data
Creation with 1,000,000,000 Personas*) by persona-hub-dagster: each item was written for one persona of a
deduplicated persona hub derived from a text corpus, then evaluated.

- **Items**: {total} ({counts["train"]} train, {counts["test"]} test; the split is a hash of `item_id`).
- **Considered**: {release.considered} generated items; left out: {dropped}.
- **Filters**: passed its evaluation (`eval/{release.task}`), not a near-duplicate of an earlier item of its shard
  (MinHash Jaccard ≥ 0.9 or embedding cosine ≥ 0.9), not contaminated. Contamination: {contamination}.
- **Models**: {", ".join(release.models) or "unknown"}. **Prompt versions**: {", ".join(release.prompt_versions)}.
- **Created**: {release.created_at:%Y-%m-%d %H:%M UTC}.

## Per shard

| shard | released items | evaluation pass rate |
|---|---:|---:|
{shards or "| – | 0 | – |"}

## Columns

`item_id` (content hash), `split`, `shard`, `persona_id`, `persona` (the persona it was written for), the lineage ids
(`source`, `text_id`: the source text, `parent_persona_id`, `root_persona_id`, `hop`), `prompting`, the task's own
columns, `messages` (the chat format trainers use), `model`, `prompt_version`. `chat/*.jsonl` holds `messages` alone.

## Known limits

Synthetic data inherits the biases and errors of the model that wrote it and of the corpus its personas came from;
an evaluation that passed is evidence, not proof, of correctness (see `eval/{release.task}` for how it was judged).
Personas are descriptions generated from public text and may echo it.
"""


def release_location(store: DeltaStore, task: str) -> str:
    """Where the release's files go: next to the tables, outside the Delta table of `release/<task>`."""
    return join_location(store.root, "_releases", task)


def metadata(release: Release, written: Mapping[str, str]) -> dict[str, Any]:
    return {
        "items": release.rows.height,
        **{f"{split}_items": n for split, n in release.counts().items()},
        "dropped": release.dropped,
        "per_shard": release.per_shard(),
        "eval_pass_rates": release.pass_rates,
        "contamination_checked": release.contamination_checked,
        "files": sorted(written),
    }

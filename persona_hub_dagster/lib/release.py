"""Training-ready releases: for one task, the items of every shard that passed their evaluation and are neither
near-duplicates nor contaminated, with their persona and lineage ids, split deterministically into train and test,
each with its chat `messages`.

The split is a hash of the item id (the same item always lands in the same split, across re-runs and new shards).
Writing a release as a folder in the Hugging Face datasets layout, with its dataset card: lib/release_export.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

LINEAGE_COLUMNS = ("source", "text_id", "parent_persona_id", "root_persona_id", "hop")
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})


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
    categories: tuple[str, ...] = ("text-generation",)  # the dataset card's task_categories (the task's release spec)

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
    synthetic, evaluated = task.table, tables.evaluation(task.name, "").table
    if not store.exists(synthetic) or not store.exists(evaluated):
        missing = synthetic if not store.exists(synthetic) else evaluated
        raise LookupError(f"{missing.name} has not been materialized: materialize it before releasing {task.name}")
    items = store.read(synthetic)
    spec = task.release
    if spec is None:
        raise LookupError(f"Task {task.name!r} declares no release (lib/synthesis/tasks/{task.name}.py)")
    evals = store.read(evaluated).select(
        "item_id", "shard", "passed", "duplicate_of", "contaminated", *spec.eval_columns
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
    if spec.joins is not None:
        keep = keep.join(spec.joins(store), on=["item_id", "shard"], how="left")
    messages = [spec.chat(row) for row in keep.iter_rows(named=True)]
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
        categories=spec.categories,
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
    split from the item id, messages from the item (and what the task's release joins in: math's verified
    solution)."""
    synthetic, hub = task.table, tables.PERSONA_HUB
    deps: dict[str, tuple[tuple[tables.Table, str], ...]] = {
        column: ((synthetic, column),)
        for column in ("item_id", "shard", "persona_id", "prompting", "model", "prompt_version", *task.columns)
    }
    deps.update({column: ((hub, column),) for column in ("persona", *LINEAGE_COLUMNS)})
    deps["split"] = ((synthetic, "item_id"),)
    joined = task.release.joined_from if task.release else ()
    deps["messages"] = tuple((synthetic, c) for c in task.columns) + tuple(joined)
    return deps


def _personas(store: DeltaStore) -> pl.DataFrame:
    hub = store.read(tables.PERSONA_HUB)
    for column in LINEAGE_COLUMNS:
        if column not in hub.columns:
            hub = hub.with_columns(pl.lit(None, dtype=pl.Int32 if column == "hop" else pl.String).alias(column))
    return hub.select("persona_id", "shard", "persona", *LINEAGE_COLUMNS).unique(["persona_id", "shard"])


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

"""What every evaluation shares: the shard's items with their personas in, and out one row per item with `passed`,
the evaluation's own check columns, the set properties (near-duplicates, grounding, contamination) and provenance,
plus the metadata every eval materialization reports (pass rate, failures per check, the shard's set metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.evaluation.properties import PROPERTY_COLUMNS, set_properties
from persona_hub_dagster.lib.generation import StageCall, rate, same_columns
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

KEY_COLUMNS = {"item_id": pl.String, "persona_id": pl.String, "shard": pl.String, "passed": pl.Boolean}
STAMP_COLUMNS = {"model": pl.String, "prompt_version": pl.String, "run_id": pl.String}


def shard_items(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, task: SynthesisTask) -> pl.DataFrame:
    """The shard's items of `task`, each with its persona's text (`persona`, from persona_hub)."""
    items = inputs[task.stage.table].collect()
    hub = (
        call.store.scan(tables.PERSONA_HUB, [call.shard]).select("persona_id", "persona").unique("persona_id").collect()
        if call.store.exists(tables.PERSONA_HUB)
        else pl.DataFrame(schema={"persona_id": pl.String, "persona": pl.String})
    )
    return items.join(hub, on="persona_id", how="left").sort("item_id")


def eval_lineage(task: SynthesisTask) -> dict[str, tuple[tuple[tables.Table, str], ...]]:
    """Column lineage of an eval/<task> table: the item's ids, and what the set properties compare."""
    item = task.stage.table
    return {
        **same_columns(item, "item_id", "persona_id", "shard"),
        "duplicate_of": ((item, "item_id"),),
        "persona_similarity": ((tables.PERSONA_HUB, "persona"),),
        "other_persona_similarity": ((tables.PERSONA_HUB, "persona"),),
    }


def eval_schema(checks: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    return {**KEY_COLUMNS, **checks, **PROPERTY_COLUMNS, **STAMP_COLUMNS}


def finish(
    task: SynthesisTask,
    items: pl.DataFrame,
    checks: pl.DataFrame,
    call: StageCall,
    *,
    check_columns: Sequence[str],
    stamp: Mapping[str, str],
    seed: int = 0,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`checks`: item_id, passed and the evaluation's own columns, one row per item. Returns the eval table's rows
    (in eval_schema order) and the metadata for its materialization."""
    texts = [task.item_text(row) for row in items.iter_rows(named=True)]
    properties = set_properties(
        items["item_id"].to_list(),
        texts,
        items["persona_id"].to_list(),
        items["persona"].fill_null("").to_list(),
        embedder=call.embedder,
        benchmarks=call.benchmarks,
        seed=seed,
    )
    own = [c for c in checks.columns if c not in ("item_id", "passed")]
    frame = (
        items.select("item_id", "persona_id", pl.lit(call.shard, dtype=pl.String).alias("shard"))
        .join(checks, on="item_id", how="left")
        .join(properties.per_item, on="item_id", how="left")
        .with_columns(
            pl.col("passed").fill_null(False),
            *[pl.lit(value, dtype=pl.String).alias(name) for name, value in stamp.items()],
        )
        .select(*KEY_COLUMNS, *own, *PROPERTY_COLUMNS, *STAMP_COLUMNS)
    )
    passed = int(frame["passed"].sum()) if frame.height else 0
    metadata = {
        "items": frame.height,
        "passed": passed,
        "pass_rate": rate(passed, frame.height),
        "failures_by_check": {c: int((~frame[c].fill_null(False)).sum()) for c in check_columns},
        "near_duplicates": int(frame["duplicate_of"].is_not_null().sum()),
        **{k: v for k, v in properties.metrics.items() if k != "items"},
    }
    return frame, metadata

"""What every evaluation shares: the shard's items with their personas in, and out one row per item with `passed`,
the evaluation's own check columns, the set properties (near-duplicates, grounding, contamination) and provenance,
plus the metadata every eval materialization reports (pass rate, failures per check, the shard's set metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.evaluation.properties import PROPERTY_COLUMNS, set_properties
from persona_hub_dagster.lib.evaluation.sandbox import ENABLE_HINT
from persona_hub_dagster.lib.stage import StageCall, StageWarning, rate, same_columns
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

KEY_COLUMNS = {"item_id": pl.String, "persona_id": pl.String, "shard": pl.String, "passed": pl.Boolean}
STAMP_COLUMNS = {"model": pl.String, "prompt_version": pl.String, "run_id": pl.String}


def shard_items(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, task: SynthesisTask) -> pl.DataFrame:
    """The shard's items of `task`, each with its persona's text (`persona`, from persona_hub)."""
    items = inputs[task.table].collect()
    hub = (
        call.store.scan(tables.PERSONA_HUB, [call.shard]).select("persona_id", "persona").unique("persona_id").collect()
        if call.store.exists(tables.PERSONA_HUB)
        else pl.DataFrame(schema={"persona_id": pl.String, "persona": pl.String})
    )
    return items.join(hub, on="persona_id", how="left").sort("item_id")


def eval_lineage(task: SynthesisTask) -> dict[str, tuple[tuple[tables.Table, str], ...]]:
    """Column lineage of an eval/<task> table: the item's ids, and what the set properties compare."""
    item = task.table
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
    (in eval_schema order) and the metadata for its materialization. An item the evaluation gives a null `passed`
    (eval/tools where programs cannot run: neither passed nor failed) keeps it and stays out of the pass rate and the
    failures; an item without a row in `checks` did not pass."""
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
        .join(checks.with_columns(_checked=pl.lit(True)), on="item_id", how="left")
        .join(properties.per_item, on="item_id", how="left")
        .with_columns(
            pl.when(pl.col("_checked")).then(pl.col("passed")).otherwise(False).alias("passed"),
            *[pl.lit(value, dtype=pl.String).alias(name) for name, value in stamp.items()],
        )
        .select(*KEY_COLUMNS, *own, *PROPERTY_COLUMNS, *STAMP_COLUMNS)
    )
    evaluated = frame.filter(pl.col("passed").is_not_null())
    passed = int(evaluated["passed"].sum()) if evaluated.height else 0
    metadata = {
        "items": frame.height,
        "passed": passed,
        "pass_rate": rate(passed, evaluated.height),
        "not_run": frame.height - evaluated.height,
        "failures_by_check": {c: int((~evaluated[c].fill_null(False)).sum()) for c in check_columns},
        "near_duplicates": int(frame["duplicate_of"].is_not_null().sum()),
        **{k: v for k, v in properties.metrics.items() if k != "items"},
    }
    if "not_run" in frame.columns:  # evaluations that run model-written programs
        metadata["programs_not_run"] = int(frame["not_run"].is_not_null().sum())
        if metadata["programs_not_run"]:
            metadata["programs_not_run_reason"] = "; ".join(frame["not_run"].drop_nulls().unique().sort())
    return frame, metadata


def _programs_not_run(metadata: Mapping[str, Any]) -> str | None:
    if not metadata.get("programs_not_run"):
        return None
    return (
        f"{metadata['programs_not_run']} of {metadata['items']} items were evaluated without running their programs "
        f"({metadata['programs_not_run_reason']}). To run them: {ENABLE_HINT}."
    )


PROGRAMS_RAN = StageWarning(
    "programs_ran",
    "Warns when model-written programs were not run for some items of the shard (no usable sandbox here, or "
    "PERSONA_HUB_SANDBOX=off): eval/math verified them with reasoning solutions only, eval/tools marked them not run.",
    _programs_not_run,
)

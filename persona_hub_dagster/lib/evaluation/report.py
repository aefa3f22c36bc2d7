"""eval/report: every evaluation metric by task and shard, plus totals across shards, with charts.

From the `eval/<task>` tables (and the `synthetic/<task>` texts): per task and shard the items, pass rate and
failures per check, near-duplicates, distinct-1/2, persona grounding (own vs other persona similarity, lift),
contamination (or "not checked"), mean judge scores; and per task across all shards the same plus, on a seeded
sample of items, the mean pairwise embedding distance and the paper's persona-vs-item similarity curve. Charts (pass
rate by task, the similarity curve, diversity by task, judge score distributions) are PNGs; `markdown()` embeds them
for the Dagster UI and `html()` is a self-contained page with the same tables and charts.
"""

from __future__ import annotations

import base64
import html as html_escape
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.coverage.selection import entropy
from persona_hub_dagster.lib.evaluation import diversity
from persona_hub_dagster.lib.evaluation.sandbox import ENABLE_HINT
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.tasks import TASKS

ALL_SHARDS = "(all)"
REPORT_SCHEMA = {
    "task": pl.String,
    "shard": pl.String,  # a shard, or "(all)" for the task's totals
    "items": pl.Int64,
    "passed": pl.Int64,
    "pass_rate": pl.Float64,  # of the items evaluated (not those whose programs were not run)
    "not_run": pl.Int64,  # items whose programs were not run here (no usable sandbox): neither passed nor failed
    "programs_not_run": pl.Int64,  # items evaluated without their program solutions (eval/math, same cause)
    "not_run_reason": pl.String,  # why (e.g. "sandbox unavailable: bubblewrap is not installed")
    "failures": pl.String,  # JSON: items failing each check
    "near_duplicates": pl.Int64,  # items flagged duplicate_of (a release drops them)
    "minhash_duplicates": pl.Int64,
    "embedding_duplicates": pl.Int64,
    "distinct_1": pl.Float64,
    "distinct_2": pl.Float64,
    "persona_similarity": pl.Float64,
    "other_persona_similarity": pl.Float64,
    "persona_lift": pl.Float64,
    "contamination": pl.String,  # "not checked", or the benchmarks checked
    "contaminated": pl.Int64,  # null when not checked
    "mean_scores": pl.String,  # JSON: the judge's mean score per criterion (judged tasks)
    "mean_pairwise_distance": pl.Float64,  # on a sample across shards ((all) rows)
    "persona_clusters": pl.Int64,  # clusters of the coverage map the items' personas came from (null: unclustered)
    "cluster_entropy_bits": pl.Float64,  # entropy of the items over those clusters: how evenly they spread
    "reported_at": pl.Datetime("us", "UTC"),
    "run_id": pl.String,
}


@dataclass
class Report:
    table: pl.DataFrame
    curves: dict[str, pl.DataFrame] = field(default_factory=dict)  # task -> the similarity curve across shards
    scores: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # task -> criterion -> score -> n
    charts: dict[str, bytes] = field(default_factory=dict)  # title -> PNG

    def totals(self) -> pl.DataFrame:
        return self.table.filter(pl.col("shard") == ALL_SHARDS)


def build(store: DeltaStore, *, embedder=None, run_id: str = "", sample: int = 1000, seed: int = 0) -> Report:
    rows, curves, scores = [], {}, {}
    now = datetime.now(UTC)
    for name, task in TASKS.items():
        evaluated = tables.evaluation(name, "").table
        if not store.exists(evaluated):
            continue
        evals = store.read(evaluated)  # a task with no item yet still gets its (all) row: 0 items
        items = store.read(task.table).join(evals.select("item_id", "shard"), on=["item_id", "shard"])
        if "persona_cluster" not in items.columns:  # items written before the coverage map
            items = items.with_columns(persona_cluster=pl.lit(None, dtype=pl.Int32))
        texts = items.with_columns(
            text=pl.Series([task.item_text(r) for r in items.iter_rows(named=True)], dtype=pl.String)
        ).select("item_id", "shard", "text", "persona_cluster")
        evals = evals.join(texts, on=["item_id", "shard"], how="left")
        for shard in sorted(evals["shard"].unique()):
            rows.append(_metrics(name, shard, evals.filter(pl.col("shard") == shard)))
        total = _metrics(name, ALL_SHARDS, evals)
        if embedder is not None and evals.height > 1:
            total["mean_pairwise_distance"], curves[name] = _sampled(store, evals, embedder, sample, seed)
        rows.append(total)
        criteria = [c.removeprefix("score_") for c in evals.columns if c.startswith("score_")]
        if criteria:
            judged = evals.filter(pl.col("judged"))
            scores[name] = {c: {str(s): int((judged[f"score_{c}"] == s).sum()) for s in range(1, 6)} for c in criteria}
    table = pl.DataFrame([{**row, "reported_at": now, "run_id": run_id} for row in rows], schema=REPORT_SCHEMA).sort(
        "task", "shard"
    )
    report = Report(table, curves, scores)
    report.charts = charts(report)
    return report


def _metrics(task: str, shard: str, evals: pl.DataFrame) -> dict[str, Any]:
    n = evals.height
    checks = [c for c in _check_columns(evals)]
    evaluated = evals.filter(pl.col("passed").is_not_null())
    failures = {c: int((~evaluated[c].fill_null(False)).sum()) for c in checks}
    reasons = evals["not_run"].drop_nulls().unique().sort().to_list() if "not_run" in evals.columns else []
    without_programs = int(evaluated["not_run"].is_not_null().sum()) if "not_run" in evals.columns else 0
    texts = evals["text"].fill_null("").to_list()
    own, other = evals["persona_similarity"], evals["other_persona_similarity"]
    checked = evals["contaminated"].is_not_null().any()
    score_columns = [c for c in evals.columns if c.startswith("score_")]
    judged = evals.filter(pl.col("judged")) if "judged" in evals.columns else evals
    return {
        "task": task,
        "shard": shard,
        "items": n,
        "passed": int(evaluated["passed"].sum()),
        "pass_rate": round(float(evaluated["passed"].mean()), 4) if evaluated.height else 0.0,
        "not_run": n - evaluated.height,
        "programs_not_run": without_programs,
        "not_run_reason": "; ".join(reasons) or None,
        "failures": json.dumps(failures, sort_keys=True),
        "near_duplicates": int(evals["duplicate_of"].is_not_null().sum()),
        "minhash_duplicates": int((evals["duplicate_by"] == "minhash").sum()),
        "embedding_duplicates": int((evals["duplicate_by"] == "embedding").sum()),
        "distinct_1": diversity.distinct_n(texts, 1),
        "distinct_2": diversity.distinct_n(texts, 2),
        "persona_similarity": _mean(own),
        "other_persona_similarity": _mean(other),
        "persona_lift": round(_mean(own) / _mean(other), 4) if _mean(other) else None,
        "contamination": "not checked" if not checked else "checked",
        "contaminated": int(evals["contaminated"].fill_null(False).sum()) if checked else None,
        "mean_scores": json.dumps({c.removeprefix("score_"): _mean(judged[c]) for c in score_columns})
        if score_columns
        else None,
        "mean_pairwise_distance": None,
        **_spread(evals["persona_cluster"]),
    }


def _spread(clusters: pl.Series) -> dict[str, Any]:
    """How the items spread over the coverage map's clusters (None where their personas were not clustered)."""
    counts = clusters.drop_nulls().value_counts()["count"].to_list() if clusters.drop_nulls().len() else []
    if not counts:
        return {"persona_clusters": None, "cluster_entropy_bits": None}
    return {"persona_clusters": len(counts), "cluster_entropy_bits": round(entropy(counts), 4)}


# The eval tables' own check columns: booleans that are not `passed` or a set property.
_NOT_CHECKS = {"passed", "contaminated"}


def _check_columns(evals: pl.DataFrame) -> list[str]:
    return [c for c, t in evals.schema.items() if t == pl.Boolean and c not in _NOT_CHECKS]


def _mean(series: pl.Series) -> float | None:
    values = series.drop_nulls().drop_nans() if series.dtype.is_float() else series.drop_nulls()
    return round(float(values.mean()), 4) if len(values) else None


def _sampled(store: DeltaStore, evals: pl.DataFrame, embedder, sample: int, seed: int):
    chosen = evals.sample(min(sample, evals.height), seed=seed) if evals.height else evals
    hub = store.read(tables.PERSONA_HUB).select("persona_id", "persona").unique("persona_id")
    chosen = chosen.join(hub, on="persona_id", how="left")
    items = embedder.encode(chosen["text"].fill_null("").to_list())
    personas = embedder.encode(chosen["persona"].fill_null("").to_list())
    distance = diversity.mean_pairwise_distance(items, sample=sample, seed=seed)
    return distance, diversity.similarity_curve(items, personas, seed=seed)


# ---------------------------------------------------------------------------------------------------- charts


def charts(report: Report) -> dict[str, bytes]:
    """PNG charts of the report (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = report.totals()
    out: dict[str, bytes] = {}
    if totals.is_empty():
        return out
    tasks = totals["task"].to_list()

    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    axes.bar(tasks, totals["pass_rate"].to_list(), color="#4c72b0")
    axes.set_ylim(0, 1)
    axes.set_ylabel("pass rate")
    axes.set_title("Items that passed their evaluation, by task")
    _finish(axes, figure)
    out["Pass rate by task"] = _png(figure, plt)

    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    x = np.arange(len(tasks))
    duplicates = (totals["near_duplicates"] / totals["items"].clip(lower_bound=1)).to_list()
    axes.bar(x - 0.2, totals["distinct_2"].fill_null(0).to_list(), 0.4, label="distinct-2", color="#55a868")
    axes.bar(x + 0.2, duplicates, 0.4, label="near-duplicate share", color="#c44e52")
    axes.set_xticks(x, tasks)
    axes.set_ylim(0, 1)
    axes.set_title("Diversity by task")
    axes.legend(fontsize=8)
    _finish(axes, figure)
    out["Diversity by task"] = _png(figure, plt)

    if report.curves:
        figure, axes = plt.subplots(figsize=(5.2, 4.2))
        for task, curve in report.curves.items():
            if curve.height:
                axes.plot(curve["persona_similarity"], curve["item_similarity"], marker="o", label=task)
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="item = persona")
        axes.set_xlabel("similarity of the two personas (cosine)")
        axes.set_ylabel("similarity of their items (cosine)")
        axes.set_title("Persona similarity vs. item similarity")
        axes.legend(fontsize=7)
        _finish(axes, figure)
        out["Persona vs. item similarity"] = _png(figure, plt)

    if report.scores:
        columns = len(report.scores)
        figure, all_axes = plt.subplots(1, columns, figsize=(3.2 * columns, 3.0), squeeze=False)
        for axes, (task, criteria) in zip(all_axes[0], report.scores.items(), strict=True):
            bottom = np.zeros(len(criteria))
            for score in range(1, 6):
                counts = np.array([criteria[c][str(score)] for c in criteria], dtype=float)
                axes.bar(list(criteria), counts, bottom=bottom, label=str(score))
                bottom += counts
            axes.set_title(task, fontsize=9)
            axes.tick_params(axis="x", labelsize=7, rotation=20)
        all_axes[0][0].legend(title="score", fontsize=7)
        figure.suptitle("Judge scores by criterion")
        figure.tight_layout()
        out["Judge scores"] = _png(figure, plt)
    return out


def _finish(axes, figure) -> None:
    axes.tick_params(axis="x", labelsize=8, rotation=20)
    figure.tight_layout()


def _png(figure, plt) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- documents

SUMMARY_COLUMNS = (
    "task",
    "items",
    "pass_rate",
    "not_run",
    "near_duplicates",
    "distinct_2",
    "persona_lift",
    "contamination",
    "mean_scores",
)


def markdown(report: Report, *, images: bool = True) -> str:
    """A summary for the asset's page: the totals per task and the charts (embedded PNGs)."""
    totals = report.totals()
    if totals.is_empty():
        return "_No evaluation has been materialized yet._"
    lines = [
        "Per task, across all shards (per shard: the report table). `pass_rate`: items that passed their evaluation; "
        "`near_duplicates`: items that nearly copy an earlier one; `persona_lift` > 1: the persona steered the item.",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "| " + " | ".join("---" for _ in SUMMARY_COLUMNS) + " |",
    ]
    for row in totals.iter_rows(named=True):
        lines.append("| " + " | ".join(_cell(row[c]) for c in SUMMARY_COLUMNS) + " |")
    lines += ["", note] if (note := programs_note(totals)) else []
    if images:
        for title, png in report.charts.items():
            lines += ["", f"**{title}**", "", f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"]
    return "\n".join(lines)


def programs_note(totals: pl.DataFrame) -> str | None:
    """What was evaluated without running model-written programs, why, and how to turn execution on."""
    affected = totals.filter(pl.col("not_run_reason").is_not_null())
    if affected.is_empty():
        return None
    parts = []
    for row in affected.iter_rows(named=True):
        if row["not_run"]:
            parts.append(f"eval/{row['task']}: {row['not_run']} items not run (neither passed nor failed)")
        if row["programs_not_run"]:
            parts.append(f"eval/{row['task']}: {row['programs_not_run']} items verified without program solutions")
    reasons = sorted({r for reason in affected["not_run_reason"].to_list() for r in reason.split("; ")})
    return (
        f"**Model-written programs were not run** ({'; '.join(reasons)}): {', '.join(parts)}. To run them: "
        f"{ENABLE_HINT}."
    )


def html(report: Report) -> str:
    """A self-contained page: the per-task summary, the full table by task and shard, and the charts."""

    def table_html(frame: pl.DataFrame) -> str:
        head = "".join(f"<th>{html_escape.escape(c)}</th>" for c in frame.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html_escape.escape(_cell(v))}</td>" for v in row) + "</tr>"
            for row in frame.iter_rows()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    figures = "".join(
        f"<figure><img alt='{html_escape.escape(t)}' src='data:image/png;base64,{base64.b64encode(p).decode()}'>"
        f"<figcaption>{html_escape.escape(t)}</figcaption></figure>"
        for t, p in report.charts.items()
    )
    shown = report.table.drop("reported_at", "run_id")
    generated = report.table["reported_at"].max() if report.table.height else None
    note = programs_note(report.totals())
    note = f"<p>{html_escape.escape(note.replace('**', ''))}</p>" if note else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>persona-hub evaluation report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px;
margin-bottom:2em}}th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f3f3f3}}
figure{{display:inline-block;margin:0 2em 2em 0}}</style></head>
<body><h1>Evaluation report</h1><p>Generated {generated}. Per task across all shards, then per task and shard.</p>
<h2>Per task</h2>{table_html(report.totals().select(SUMMARY_COLUMNS))}{note}
<h2>Charts</h2>{figures}
<h2>By task and shard</h2>{table_html(shown)}
</body></html>
"""


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def report_location(store: DeltaStore) -> str:
    """Where the HTML report goes: next to the eval tables."""
    return store.table_uri(tables.EVAL_REPORT) + ".html"


def metadata_summary(report: Report) -> Mapping[str, Any]:
    totals = report.totals()
    return {
        "tasks": totals.height,
        "items": int(totals["items"].sum()) if totals.height else 0,
        "pass_rate_by_task": dict(zip(totals["task"].to_list(), totals["pass_rate"].to_list(), strict=True)),
        "contamination": "checked" if (totals["contamination"] == "checked").any() else "not checked",
        "programs_not_run": programs_note(totals) or "none",
    }

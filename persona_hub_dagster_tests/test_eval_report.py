"""Evaluations and eval/report as Dagster materializes them: two shards of every task (scripted model answers, so
the numbers are known), an evaluation with a configured benchmark through the stage factory, the report's table,
charts (valid PNGs) and HTML, and the contamination command on files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.evaluation.assets import evaluation_assets
from persona_hub_dagster.defs.evaluation.report import eval_report
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.resources import BenchmarksResource
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.embeddings import Embedder
from persona_hub_dagster.lib.evaluation import report
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster_tests.helpers.evaluated_store import SHARDS

REPO = Path(__file__).resolve().parents[1]


def test_every_evaluation_writes_one_row_per_item_with_passed_checks_and_properties(evaluated):
    store = evaluated
    for name, stage in EVALUATIONS.items():
        rows = store.read(stage.table)
        items = store.read(TASKS[name].table)
        assert sorted(rows["item_id"]) == sorted(items["item_id"]), name
        assert rows["passed"].dtype == pl.Boolean and rows["passed"].is_not_null().all()
        assert {"duplicate_of", "persona_similarity", "contaminated"} <= set(rows.columns)
        assert rows["contaminated"].is_null().all(), "no benchmark configured: not checked, never 'clean'"
    assert store.read(tables.EVAL_MATH)["passed"].all()  # every solver found 126
    assert store.read(tables.evaluation("reasoning", "").table)["passed"].all()
    judged = store.read(tables.evaluation("knowledge", "").table)
    assert judged["passed"].all() and (judged["score_accurate"] == 4).all()
    # the scripted generator writes the same tool for every persona: all but the first are flagged duplicates
    tools = store.read(tables.evaluation("tools", "").table, ["north"]).sort("item_id")
    assert tools["duplicate_of"].null_count() == 1 and set(tools["duplicate_by"].drop_nulls()) == {"minhash"}


@pytest.mark.slow
def test_the_report_materializes_over_two_shards_with_charts_and_html(evaluated):
    store = evaluated
    storage = DeltaStorageResource(root=store.root)
    result = dg.materialize(
        [eval_report], resources={"storage": storage, "embeddings": EmbeddingsResource()}, raise_on_error=False
    )
    assert result.success
    table = store.read(tables.EVAL_REPORT)
    assert set(table["task"]) == set(TASKS)
    assert set(table["shard"]) == {*SHARDS, report.ALL_SHARDS}
    totals = table.filter(pl.col("shard") == report.ALL_SHARDS)
    items = {name: store.row_count(TASKS[name].table) for name in TASKS}
    assert dict(totals.select("task", "items").iter_rows()) == items == {name: 2 + 3 for name in TASKS}
    assert (totals["contamination"] == "not checked").all() and totals["contaminated"].is_null().all()
    math = totals.filter(pl.col("task") == "math").row(0, named=True)
    assert math["pass_rate"] == 1.0 and json.loads(math["failures"]) == {"verified": 0}

    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    summary = metadata["summary"].value
    assert "| math |" in summary and summary.count("data:image/png;base64,") == 4
    built = report.build(store, embedder=Embedder())
    assert set(built.charts) == {
        "Pass rate by task",
        "Diversity by task",
        "Persona vs. item similarity",
        "Judge scores",
    }
    for png in built.charts.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    page = Path(metadata["html_report"].value).read_text()
    assert page.startswith("<!doctype html>") and page.count("<img") == 4 and "north" in page and "south" in page


def test_an_evaluation_checks_a_configured_benchmark_through_the_stage_factory(evaluated, tmp_path):
    """eval/tools (no model needed) as Dagster runs it, with a benchmark that holds one of the items verbatim."""
    store = evaluated
    tools = store.read(TASKS["tools"].table, ["south"])
    planted = TASKS["tools"].item_text(tools.row(0, named=True))
    bench = tmp_path / "tool-bench.jsonl"
    bench.write_text(json.dumps({"text": "Something unrelated about tides."}) + "\n" + json.dumps({"text": planted}))
    storage = DeltaStorageResource(root=store.root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(text_shards.name, ["south"])
        asset = next(a for a in evaluation_assets if a.node_def.name == "evaluate_tools")
        upstream = dg.AssetSpec(["synthetic", "tools"], partitions_def=text_shards)
        result = dg.materialize(
            [asset, upstream],
            selection=[asset],
            partition_key="south",
            instance=instance,
            resources={
                "storage": storage,
                "io_manager": DeltaIOManager(storage=storage),
                "embeddings": EmbeddingsResource(),
                "benchmarks": BenchmarksResource(files=[f"toolbench={bench}"]),
            },
        )
    rows = store.read(tables.evaluation("tools", "").table, ["south"])
    assert rows["contaminated"].is_not_null().all() and rows["contaminated"].any()
    flagged = rows.filter(pl.col("contaminated")).row(0, named=True)
    assert flagged["contamination_benchmark"] == "toolbench" and flagged["contamination_index"] == 1
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["contamination"].value["checked"] == ["toolbench"] and "pass_rate" in metadata
    assert metadata["failures_by_check"].value.keys() >= {"static", "returns", "json_serializable"}


def test_the_contamination_command_prints_one_json_line_per_flag(tmp_path):
    bench = tmp_path / "bench.parquet"
    pl.DataFrame(
        {
            "problem": [
                "Tom reads 12 pages of his novel every weekday and 30 pages on each day of the weekend."
                " The novel has 402 pages. How many full weeks does he need to finish it?",
                "A baker made 48 muffins.",
            ]
        }
    ).write_parquet(bench)
    items = tmp_path / "items.csv"
    pl.DataFrame(
        {
            "body": [
                "An unrelated item about harbour pilots and fog at night.",
                "Tom reads 12 pages of his novel every weekday and 30 pages on each day of the weekend."
                " The novel has 402 pages. How long?",
            ]
        }
    ).write_csv(items)
    command = [
        sys.executable,
        "-m",
        "persona_hub_dagster.cli",
        "contamination",
        str(items),
        "--benchmark",
        str(bench),
        "--items-field",
        "body",
        "--benchmark-field",
        "problem",
        "--embeddings",
        "none",
    ]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PERSONA_HUB_STORAGE": str(tmp_path / "delta")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"item_index": 1, "benchmark": "bench", "benchmark_index": 0, "method": "ngram13", "score": lines[0]["score"]}
    ]
    assert "1 of 2 items flagged against bench (2 records)" in result.stderr

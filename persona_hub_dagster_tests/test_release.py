"""Training-ready releases: what passes goes in (and only that), the Hugging Face datasets layout loads with the
`datasets` library, the chat JSONL has the messages trainers use, the split is deterministic, and the export
command works without the UI (and fails in one line when it cannot push)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.release.assets import release_assets
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.lib import release, release_export, tables
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def expected_items(store: DeltaStore, task: str) -> set[str]:
    evals = store.read(tables.evaluation(task, "").table)
    keep = evals.filter(pl.col("passed") & pl.col("duplicate_of").is_null() & ~pl.col("contaminated").fill_null(False))
    return set(keep["item_id"])


def test_every_release_materializes_with_exactly_the_items_that_passed(evaluated):
    store = evaluated
    result = dg.materialize(release_assets, resources={"storage": DeltaStorageResource(root=store.root)})
    assert result.success
    for task in TASKS:
        rows = store.read(tables.release(task))
        assert set(rows["item_id"]) == expected_items(store, task), task
        assert rows["persona"].is_not_null().all() and rows["text_id"].is_not_null().all()
        assert set(rows["split"]) <= {"train", "test"}
    # The scripted tools are one tool for every persona: all but the first of each shard are near-duplicates.
    tools = store.read(tables.release("tools"))
    assert tools.height == 2 and set(tools["shard"]) == {"north", "south"}
    events = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    math = events["math"]
    assert math["items"].value == store.row_count(tables.release("math"))
    assert "license:" in math["dataset_card"].value and math["contamination_checked"].value is False
    assert Path(math["location"].value, "README.md").exists()


def test_the_release_loads_with_the_datasets_library(evaluated, tmp_path):
    import datasets

    ids = release.build(evaluated, TASKS["math"]).rows["item_id"].to_list()
    median = sorted(int(i[:8], 16) / 0xFFFFFFFF for i in ids)[len(ids) // 2]  # a fraction that splits these ids
    built = release.build(evaluated, TASKS["math"], release.ReleaseSettings(test_fraction=median))
    counts = built.counts()
    assert counts["train"] and counts["test"]
    folder = tmp_path / "math-release"
    written = release_export.write(built, str(folder), storage_root=evaluated.root).files
    assert {"README.md", "data/train-00000-of-00001.parquet", "chat/test.jsonl"} <= set(written)
    splits = datasets.load_dataset(
        "parquet",
        data_files={s: str(folder / "data" / f"{s}-*.parquet") for s in ("train", "test")},
        cache_dir=str(tmp_path / "cache"),
    )
    assert splits["train"].num_rows == counts["train"] and splits["test"].num_rows == counts["test"]
    assert {"item_id", "persona", "problem", "messages", "text_id"} <= set(splits["train"].column_names)
    first = splits["train"][0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == first["problem"] and "Answer: 126" in first["messages"][1]["content"]

    chat = datasets.load_dataset(
        "json", data_files=str(folder / "chat" / "train.jsonl"), cache_dir=str(tmp_path / "c2")
    )
    assert chat["train"].column_names == ["messages"] and chat["train"].num_rows == counts["train"]
    by_folder = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "c3"))  # the card's configs
    assert set(by_folder) == {"train", "test"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense:") and "size_categories" in card and "**not checked**" in card


def test_the_split_is_deterministic_and_stable_as_shards_are_added(evaluated):
    first = release.build(evaluated, TASKS["reasoning"])
    again = release.build(evaluated, TASKS["reasoning"])
    assert first.rows.select("item_id", "split").equals(again.rows.select("item_id", "split"))
    for item_id, split in first.rows.select("item_id", "split").iter_rows():
        assert release.split_of(item_id, 0.1) == split  # a function of the item alone, whatever else is released


def test_every_task_has_a_chat_format(evaluated):
    for name, task in TASKS.items():
        rows = release.build(evaluated, task).rows
        if rows.is_empty():
            continue
        roles = [m["role"] for m in rows["messages"][0]]
        assert roles and roles[-1] in ("assistant", "user") and "user" in roles, name
    conversation = release.build(evaluated, TASKS["conversations"]).rows["messages"][0]
    assert [m["role"] for m in conversation] == ["user", "assistant"] * 3


def test_export_writes_the_chosen_formats_and_a_failed_push_is_one_line(evaluated, tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "PERSONA_HUB_STORAGE": evaluated.root,
        "HF_HUB_OFFLINE": "1",
    }
    out = tmp_path / "export"
    command = [sys.executable, "-m", "persona_hub_dagster.cli", "export", "knowledge", "--out", str(out)]
    result = subprocess.run(
        [*command, "--format", "chat", "--format", "jsonl"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "chat" / "train.jsonl").exists() and (out / "jsonl" / "train.jsonl").exists()
    assert not (out / "data").exists() and (out / "README.md").exists()
    line = json.loads((out / "chat" / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["user", "assistant"]

    pushed = subprocess.run(
        [*command, "--push", "someone/persona-knowledge"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 1
    assert pushed.stderr.strip().count("\n") == 0 and "could not push to the Hugging Face Hub" in pushed.stderr

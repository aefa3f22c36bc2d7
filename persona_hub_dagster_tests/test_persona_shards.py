"""Bring your own personas: a shard of ready-made personas skips Text-to-Persona (no LLM call, no model loaded),
is expanded only on request, goes through the hub like any shard, feeds the tasks, and traces to its file and record.

The end-to-end test runs Dagster's own `dagster asset materialize --select '+persona_hub'` with the LLM pointed at a
closed port: any LLM call would fail the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.hub.assets import build_persona_hub
from persona_hub_dagster.defs.models import EmbeddingsResource, LLMResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import asset_key
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.defs.synthesis.assets import demonstrations_asset, synthesis_assets
from persona_hub_dagster.lib import filesystems, tables
from persona_hub_dagster.lib.lineage import format_trace, trace_any
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.personas import GIVEN, persona_id, persona_to_persona
from persona_hub_dagster.lib.shard_files import shard_file
from persona_hub_dagster.lib.shard_identity import discover_shard_files
from persona_hub_dagster.lib.shards import ShardRegistry
from persona_hub_dagster.lib.stage import StageCall
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.conftest import REPO, free_port
from persona_hub_dagster_tests.helpers.cli import persona_hub
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend

SHARD = "my-personas"
ROLES = ["nurse", "welder", "historian", "beekeeper", "tax adviser", "violinist", "ferry captain", "geologist"]
PLACES = ["Lisbon", "Osaka", "Nairobi", "Winnipeg", "Valparaiso", "Tromso", "Hanoi", "Tbilisi"]
INTERESTS = ["tide tables", "medieval trade routes", "soil acidity", "jazz harmony", "bridge loads", "bird migration"]


def generated_personas(n: int) -> list[str]:
    """n distinct, plausible personas (as a user's file would hold them)."""
    return [
        f"A {ROLES[i % 8]} from {PLACES[(i // 8) % 8]} who spends weekends on {INTERESTS[(i // 64) % 6]} "
        f"and keeps notebook number {i}"
        for i in range(n)
    ]


def write_persona_file(path: Path, n: int = 3000) -> dict[str, int]:
    """JSONL with a `description` column, an id and an extra field; plus bad records. Returns the expected reasons."""
    records: list[object] = [
        {"uid": f"p{i}", "description": p, "source": "survey"} for i, p in enumerate(generated_personas(n))
    ]
    records += [
        {"uid": "bad-empty", "description": "   "},
        {"uid": "bad-type", "description": 42},
        {"uid": "bad-long", "description": "A very talkative person " * 200},
        {"uid": "bad-short", "description": "cook"},
        {"uid": "bad-missing"},
        {"uid": "dup", "description": records[0]["description"]},  # type: ignore[index]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    return {
        "empty": 1,
        "text_not_string": 1,
        "too_long": 1,
        "too_short": 1,
        "missing_text": 1,
        "duplicate": 1,
        "invalid_json": 1,
    }


def test_files_under_the_personas_folder_are_persona_shards(tmp_path):
    (tmp_path / "personas" / "2026").mkdir(parents=True)
    (tmp_path / "personas" / "2026" / "crowd.jsonl").write_text('{"persona": "A ferry captain"}\n')
    (tmp_path / "web.jsonl").write_text('{"text": "some text"}\n')
    kinds = {f.key: f.kind for f in discover_shard_files(str(tmp_path)).files}
    assert kinds == {"personas-2026-crowd": "personas", "web": "text"}
    assert {f.kind for f in discover_shard_files(str(tmp_path), personas_folder=None).files} == {"text"}
    assert {f.kind for f in discover_shard_files(str(tmp_path), personas_folder="personas/2026").files} == {
        "personas",
        "text",
    }


def test_registry_keeps_the_kind_and_older_registries_read_as_text(store, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"persona": "A ferry captain who reads tide tables"}\n')
    registry = ShardRegistry(store)
    registry.register([shard_file(filesystems.stat(str(path)), key="p", kind="personas")], registered_by="test")
    registered = registry.get("p")
    assert registered.given_personas and registered.column("text") == "persona"
    # A registry written before shard kinds has no `kind` column: its shards are text shards.
    store.write_partitions(tables.SHARD_REGISTRY, store.read(tables.SHARD_REGISTRY).drop("kind"), partitions=None)
    assert "kind" not in store.read(tables.SHARD_REGISTRY).columns
    assert registry.get("p").kind == "text" and registry.frame()["kind"].to_list() == ["text"]


def test_persona_to_persona_expands_a_persona_shard_only_on_request(local_store, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("")
    ShardRegistry(local_store).register(
        [shard_file(filesystems.stat(str(path)), key=SHARD, kind="personas")], registered_by="test"
    )
    personas = ["A ferry captain who reads tide tables", "A beekeeper who tests soil acidity"]
    seeds = pl.DataFrame(
        {"persona_id": [persona_id(p) for p in personas], "persona": personas, "text_id": ["t1", "t2"]}
    )
    answer = {"related": [{"relation": "deckhand", "persona": "A young deckhand learning to splice ropes"}]}
    backend = ScriptedBackend(lambda request: Completion(text=json.dumps(answer), finish_reason="stop"))

    def expand(**settings):
        call = StageCall(LLMClient(lambda: backend), local_store, SHARD, "run-1")
        opts = persona_to_persona.ExpansionSettings(hops=1, **settings)
        return call.client, persona_to_persona.run({tables.TEXT_PERSONAS: seeds.lazy()}, call, opts)

    client, skipped = expand()
    assert not client.opened and backend.calls == []  # not even the model was opened
    assert (
        skipped.tables[tables.EXPANDED_PERSONAS].is_empty() and "expand_persona_shards" in skipped.metadata["skipped"]
    )

    client, expanded = expand(expand_persona_shards=True)
    assert len(backend.calls) == 2
    rows = expanded.tables[tables.EXPANDED_PERSONAS]
    assert rows.height == 2 and set(rows["parent_persona_id"]) == set(seeds["persona_id"])


def test_the_cli_registers_a_persona_file_and_refuses_a_persona_column_on_a_text_shard(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PERSONA_HUB_STORAGE": str(tmp_path / "delta")}
    path = tmp_path / "crowd.csv"
    path.write_text("id,who\n1,A ferry captain who reads tide tables\n")
    wrong = persona_hub(env, "register-shard", str(path), "--persona-column", "who", check=False)
    assert wrong.returncode != 0 and "--kind personas" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    out = persona_hub(env, "register-shard", str(path), "--kind", "personas", "--persona-column", "who").stdout
    assert "ready-made personas" in out
    assert "personas" in persona_hub(env, "shards").stdout.split("crowd")[1]
    registered = ShardRegistry(DeltaStore(root=env["PERSONA_HUB_STORAGE"])).get("crowd")
    assert registered.kind == "personas" and registered.text_column == "who"


@pytest.fixture(scope="module")
def persona_shard(tmp_path_factory):
    """A 3,000-persona file registered with the CLI and taken through `+persona_hub` by Dagster's own CLI, with
    the LLM pointed at a port nobody listens on (a call would fail the run)."""
    root = tmp_path_factory.mktemp("persona_shard")
    path = root / "crowd.jsonl"
    reasons = write_persona_file(path)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "home"),
        "PERSONA_HUB_STORAGE": str(root / "delta"),
        "PERSONA_HUB_LLM_BACKEND": "openai",
        "PERSONA_HUB_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "PERSONA_HUB_LLM_MODEL": "nobody-home",
    }
    (root / "home").mkdir()
    (root / "home" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    register = [sys.executable, "-m", "persona_hub_dagster.cli", "register-shard", str(path), "--key", SHARD]
    register += ["--kind", "personas", "--persona-column", "description"]
    subprocess.run(register, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    dagster = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "persona_hub_dagster.definitions",
    ]
    log = ""
    # What the shard sensor runs when the file lands (raw_text), then the command: the hub and its parents.
    for selection in ("raw_text", "+persona_hub"):
        command = [*dagster, "--select", selection, "--partition", SHARD]
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        log += result.stdout + result.stderr
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        # Every table written has its materialization, also those the selection did not name (the rejects, the
        # hub's decisions).
        for table in (tables.RAW_TEXT_REJECTS, tables.TEXT_TO_PERSONA.rejects, tables.PERSONA_HUB_DECISIONS):
            event = instance.get_latest_materialization_event(asset_key(table))
            assert event is not None and event.asset_materialization.partition == SHARD, table.name
    return DeltaStore(root=env["PERSONA_HUB_STORAGE"]), path, reasons, log


@pytest.mark.slow
def test_a_persona_shard_reaches_the_hub_without_an_llm_call(persona_shard):
    store, _, reasons, log = persona_shard
    assert "RUN_SUCCESS" in log
    texts = store.read(tables.RAW_TEXT, [SHARD])
    assert texts.height == 3000
    # Every bad record is quarantined with its reason and the record as the file held it.
    rejects = store.read(tables.RAW_TEXT_REJECTS, [SHARD])
    assert rejects.group_by("reason").len().sort("reason").rows() == sorted(reasons.items())
    assert '"uid": "bad-type"' in rejects.filter(pl.col("reason") == "text_not_string")["raw"][0]

    personas = store.read(tables.TEXT_PERSONAS, [SHARD])
    assert personas.height == 3000 and set(personas["relation"]) == {GIVEN}
    assert personas["model"].null_count() == 3000  # no model wrote them
    assert store.row_count(tables.TEXT_TO_PERSONA.rejects, [SHARD]) == 0
    assert store.row_count(tables.EXPANDED_PERSONAS, [SHARD]) == 0  # not expanded unless asked
    # No LLM request was cached, because none was made.
    if store.exists(tables.LLM_RESPONSES):
        namespaces = store.read(tables.LLM_RESPONSES)["namespace"].unique().to_list()
        assert not [n for n in namespaces if n.endswith(f".{SHARD}")]

    # The hub filters and deduplicates them like any shard's: the personas that differ only in their number are
    # near-duplicates, so it keeps far fewer than it was given, and says why for each one it dropped.
    hub = store.read(tables.PERSONA_HUB, [SHARD])
    decisions = store.read(tables.PERSONA_HUB_DECISIONS, [SHARD])
    assert 0 < hub.height < 3000 and decisions.height == 3000
    assert set(decisions.filter(pl.col("decision") == "dropped")["reason"].str.split(":").list.first()) <= {
        "minhash",
        "semantic",
        "quality",
    }


@pytest.mark.slow
def test_a_given_persona_traces_to_its_file_and_record(persona_shard):
    store, path, _, _ = persona_shard
    kept = store.read(tables.PERSONA_HUB, [SHARD]).sort("persona_id").row(0, named=True)
    trace = trace_any(store, kept["persona_id"])
    record = trace.text["record_index"]
    line = json.loads(path.read_text().splitlines()[record])
    assert line["description"] == kept["persona"] == trace.chain[-1]["persona"]
    assert json.loads(trace.text["source_fields"])["uid"] == line["uid"]  # the user's id and extra columns
    shown = format_trace(trace)
    assert f"{path} #{record}" in shown and "[given]" in shown and "source text" not in shown


@pytest.mark.llm
def test_a_persona_shard_feeds_the_tasks(persona_shard):
    """Its hub is a hub like any other: the embedded model writes a math problem for one of its personas."""
    store, _, _, _ = persona_shard
    math = next(a for a in synthesis_assets if asset_key(tables.synthetic("math").table) in a.keys)
    storage = DeltaStorageResource(root=store.root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(text_shards.name, [SHARD])
        result = dg.materialize(
            [build_persona_hub, demonstrations_asset, math],  # the hub is read, not rebuilt (the selection)
            partition_key=SHARD,
            instance=instance,
            run_config={"ops": {"synthesize_math": {"config": {"personas": 1}}}},
            resources={
                "storage": storage,
                "io_manager": DeltaIOManager(storage=storage),
                "llm": LLMResource(),
                "embeddings": EmbeddingsResource(),
            },
            selection=[asset_key(tables.synthetic("math").table)],
        )
    assert result.success
    stage = tables.synthetic("math")
    items = store.read(stage.table, [SHARD])
    assert items.height + store.row_count(stage.rejects, [SHARD]) == 1
    hub_ids = set(store.read(tables.PERSONA_HUB, [SHARD])["persona_id"])
    asked = items["persona_id"].to_list() or [json.loads(store.read(stage.rejects)["request"][0])["persona_id"]]
    assert set(asked) <= hub_ids

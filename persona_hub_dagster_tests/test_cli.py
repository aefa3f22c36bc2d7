"""The persona-hub command as users run it (a real subprocess), on a temporary instance and storage root."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.helpers.cli import persona_hub

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "dagster_home"
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PERSONA_HUB_STORAGE": str(tmp_path / "delta"),
        "PERSONA_HUB_SOURCE": str(tmp_path / "corpus"),
    }


@pytest.mark.llm
@pytest.mark.timeout(2400)  # two demos
def test_demo_registers_and_processes_the_sample_shard(env):
    result = persona_hub(env, "demo")
    store = DeltaStore(root=env["PERSONA_HUB_STORAGE"])
    assert store.row_count("raw_text", ["sample"]) >= 140
    assert "raw_text" in result.stdout and store.table_uri("raw_text") in result.stdout
    assert "http://127.0.0.1:3000" in result.stdout
    # Every stage ran for the shard, and the demo traced one item back to its text.
    for table in (["text_personas"], ["persona_hub"], ["synthetic", "math"], ["eval", "math"]):
        assert store.row_count(table, ["sample"]) > 0, table
    assert "One traced example" in result.stdout and "source text" in result.stdout
    # Not a terminal: no progress bars, the stage's progress line in the log (answers, cache hits, rates).
    assert "text_personas sample done:" in result.stderr and "answers/s" in result.stderr
    assert "tokens_s=" not in result.stderr and "\r" not in result.stderr
    # Every task and its evaluation materialized for the shard (rows or rejects), and the report covers them all.
    for task in ("math", "reasoning", "instructions", "conversations", "knowledge", "npc", "tools"):
        assert store.exists(["synthetic", task]) and store.exists(["eval", task]), task
        assert f"synthetic/{task}" in result.stdout.split("One example per synthesis task")[1]
    report = store.read(["eval", "report"])
    assert set(report["shard"]) == {"sample", "(all)"}
    assert "Evaluation (eval/report, all shards)" in result.stdout and "report.html" in result.stdout

    # The instance the UI reads knows the shard and the run.
    home = Path(env["DAGSTER_HOME"])
    assert (home / "dagster.yaml").resolve() == (REPO / "dagster.yaml").resolve()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_dynamic_partitions("text_shards") == ["sample"]
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_text"))
        assert event.asset_materialization.partition == "sample"

    # Any id of the output traces back to the file and record it came from.
    item_id = store.read(["synthetic", "math"], ["sample"])["item_id"][0]
    traced = json.loads(persona_hub(env, "trace", item_id, "--json").stdout)
    assert traced["item"]["item_id"] == item_id and traced["task"] == "math"
    assert traced["source"]["source_uri"].endswith(".jsonl") and traced["source"]["record_index"] >= 0
    assert "source text" in persona_hub(env, "trace", item_id).stdout
    missing = persona_hub(env, "trace", "no-such-id", check=False)
    assert missing.returncode == 2 and "no item, persona or text id" in missing.stderr

    # Running it again is idempotent: same shard, same rows, one more run.
    persona_hub(env, "demo")
    assert store.row_count("raw_text", ["sample"]) == store.row_count("raw_text")


@pytest.mark.slow
def test_register_materialize_and_list_shards_by_hand(env, tmp_path):
    path = tmp_path / "incoming" / "Forum Posts.jsonl"
    path.parent.mkdir()
    path.write_text(
        "".join(
            json.dumps({"body": f"post {i}: my build crashes after the patch, any ideas?"}) + "\n" for i in range(4)
        )
    )
    result = persona_hub(env, "register-shard", str(path), "--text-column", "body")
    assert "registered shard 'forum-posts'" in result.stdout

    persona_hub(env, "materialize", "forum-posts", "--job", "land_text_shard")
    assert DeltaStore(root=env["PERSONA_HUB_STORAGE"]).row_count("raw_text", ["forum-posts"]) == 4
    listing = persona_hub(env, "shards").stdout
    assert "forum-posts" in listing and str(path) in listing


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(env, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("# not a shard")
    result = persona_hub(env, "register-shard", str(notes), check=False)
    assert result.returncode == 2 and "not a shard format" in result.stderr

    result = persona_hub(env, "register-shard", str(tmp_path / "missing.jsonl"), check=False)
    assert result.returncode == 2 and "no such file" in result.stderr

    result = persona_hub(env, "materialize", "never-registered", check=False)
    assert result.returncode == 1 and "is not registered" in result.stderr


def test_prompt_prints_every_step_fully_rendered(env):
    tools = persona_hub(env, "prompt", "tools", "--mode", "few_shot").stdout
    assert "synthetic/tools · few_shot · step 1/2: spec (tool_spec.v1+" in tools
    assert "step 2/2: code (tool_code.v1+" in tools and "<spec>" in tools
    assert tools.count("<example>\n") == 3 and "{{" not in tools and "--- answer schema ---" in tools

    talk = persona_hub(env, "prompt", "conversations", "--set", "turns=2", "--persona", "A beekeeper.").stdout
    assert "turn 1" in talk and "turn 2" in talk and "User: " in talk and "A beekeeper." in talk

    math = persona_hub(env, "prompt", "math", "--set", "focus=geometry").stdout
    assert "Create a geometry problem" in math

    derived = persona_hub(env, "prompt", "npc", "--mode", "persona_few_shot")
    assert "Written by: (the persona the `demonstrations` asset derives" in derived.stdout
    assert "materialize the `demonstrations` asset" in derived.stderr

    bad = persona_hub(env, "prompt", "math", "--set", "focus", check=False)
    assert bad.returncode == 2 and "SETTING=VALUE" in bad.stderr


@pytest.mark.slow
def test_a_file_that_cannot_be_read_is_one_clear_line_and_the_trace_is_opt_in(env, tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    persona_hub(env, "register-shard", str(bad))
    result = persona_hub(env, "materialize", "bad", "--job", "land_text_shard", check=False)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "error: ingest_raw_text: Shard 'bad' cannot be ingested" in result.stderr and "gzip" in result.stderr
    assert len(output.strip().splitlines()) <= 10 and "Stack Trace" not in output
    verbose = persona_hub(env, "--verbose", "materialize", "bad", "--job", "land_text_shard", check=False)
    assert "Stack Trace" in verbose.stdout + verbose.stderr


@pytest.mark.slow
def test_concurrent_first_commands_share_one_healthy_instance(env, tmp_path):
    files = []
    for name in ("north", "south", "east"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps({"text": f"A report from the {name} harbour about pilots and fog."}) + "\n")
        files.append(path)
    command = [sys.executable, "-m", "persona_hub_dagster.cli", "register-shard"]
    processes = [
        subprocess.Popen([*command, str(p)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for p in files
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert sorted(instance.get_dynamic_partitions("text_shards")) == ["east", "north", "south"]
    persona_hub(env, "materialize", "north", "--job", "land_text_shard")  # later commands still work
    assert DeltaStore(root=env["PERSONA_HUB_STORAGE"]).row_count("raw_text", ["north"]) == 1


@pytest.mark.slow
def test_a_run_killed_with_its_process_is_marked_failed_by_the_next_command(env, tmp_path):
    import signal
    import time

    path = tmp_path / "slow.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"Text {i} about lighthouse keepers and storms."}) + "\n" for i in range(40))
    )
    persona_hub(env, "register-shard", str(path))
    slow = subprocess.Popen(
        [sys.executable, "-m", "persona_hub_dagster.cli", "materialize", "slow"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, run = time.monotonic() + 240, None
    while run is None and time.monotonic() < deadline:
        time.sleep(1)
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            started = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            run = started[0] if started else None
    assert run is not None, "the run never started"
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=30)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # left behind

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "Another text about harbour pilots at night."}) + "\n")
    result = persona_hub(env, "register-shard", str(other))
    assert f"run {run.run_id} was left running" in result.stdout
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_failed_step_prints_its_root_cause_not_dagsters_wrapper():
    """The line `materialize` prints for a failure is the exception our code raised, not Dagster's wrapper
    (DagsterExecutionStepExecutionError, whose own line names only the op)."""
    from persona_hub_dagster.cli.running import failure_cause
    from persona_hub_dagster.lib.evaluation.sandbox import SandboxUnavailable

    @dg.asset
    def evaluate_programs():
        try:
            raise FileNotFoundError("bwrap")
        except FileNotFoundError as exc:
            raise SandboxUnavailable(
                "Running model-written programs needs bubblewrap, which is not installed."
            ) from exc

    @dg.asset
    def refuse():
        raise dg.Failure("eval/math has no rows for shard 's'.\nMore detail on the next line.")

    for asset, expected in (
        (
            evaluate_programs,
            "SandboxUnavailable: Running model-written programs needs bubblewrap, which is not installed.",
        ),
        (refuse, "eval/math has no rows for shard 's'."),
    ):
        result = dg.materialize([asset], raise_on_error=False)
        (event,) = [e for e in result.all_events if e.is_step_failure]
        assert failure_cause(event) == expected


def test_run_settings_from_a_file_set_and_sample_compose_and_typos_are_one_line(env, tmp_path):
    from persona_hub_dagster.cli import main
    from persona_hub_dagster.cli.running import run_settings

    settings = tmp_path / "small.yaml"
    settings.write_text("synthesize_math: {personas: 5, prompting: few_shot}\ntext_to_persona: {max_texts: 100}\n")
    args = argparse.Namespace(
        job="process_text_shard",
        settings_file=str(settings),
        settings_set=["synthesize_math.personas=2", "evaluate_math.focus_x=1"],
        sample=7,
    )
    with pytest.raises(ValueError, match="evaluate_math has no setting focus_x; its settings are .*min_agreement"):
        run_settings(args)
    args.settings_set = args.settings_set[:1]
    assert run_settings(args) == {
        "synthesize_math": {"personas": 2, "prompting": "few_shot"},  # --set wins over the file
        "text_to_persona": {"max_texts": 7},  # --sample wins over both
    }
    # On the command line: one line, with the valid names.
    typo = persona_hub(env, "materialize", "s", "--set", "synthesize_math.persona=2", check=False)
    assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
        "error: synthesize_math has no setting persona; its settings are batch_size, clusters, focus, max_tokens, "
        "min_similarity, personas, prompting, query, samples_per_persona, sampling, seed, shots, temperature, where"
    ]
    assert main(["materialize", "s", "--set", "no_such_stage.x=1"]) == 2


def test_prompt_and_export_offer_exactly_the_registered_tasks():
    """The task commands take their choices from the synthesis task registry: a new task is on the command line
    without a second list to keep."""
    from persona_hub_dagster.cli.parser import build_parser
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    parser = build_parser(description="")
    for name in TASKS:
        assert parser.parse_args(["prompt", name]).task == name
        assert parser.parse_args(["export", name, "--out", "release"]).task == name
    with pytest.raises(SystemExit):
        parser.parse_args(["prompt", "no_such_task"])


@pytest.mark.slow
def test_a_model_server_that_is_down_is_one_line_naming_it(env, tmp_path):
    corpus = tmp_path / "notes.jsonl"
    corpus.write_text(json.dumps({"text": "The ferry timetable changes on Monday for the winter season."}) + "\n")
    persona_hub(env, "register-shard", str(corpus))
    down = {
        **env,
        "PERSONA_HUB_LLM_BACKEND": "openai",
        "PERSONA_HUB_LLM_BASE_URL": "http://127.0.0.1:9/v1",  # the discard port: nothing listens
        "PERSONA_HUB_LLM_MODEL": "served-model",
    }
    result = persona_hub(down, "materialize", "notes", "--set", "text_to_persona.relations_per_text=1", check=False)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: text_to_persona: BackendFailure: 1 of 1 requests to openai (served-model) failed")
    assert "Cannot connect to host 127.0.0.1:9" in line and "DagsterExecutionStepExecutionError" not in line

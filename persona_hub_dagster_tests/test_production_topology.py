"""The production deployment as processes against real services: PostgreSQL (Debian's server, a fresh cluster) as
the instance storage, moto's S3 server for the step logs, and the three Dagster processes started by
infra/entrypoint.sh with infra/dagster.yaml (only the run launcher differs: runs are code-server subprocesses, not
ECS tasks; test_infra_ecs.py covers EcsRunLauncher against moto's ECS).

- A backfill of three shards launched through GraphQL queues its runs, holds the pool limits (no two hub steps,
  no two LLM steps overlap), survives `kill -9` of the daemon in the middle, and ends with every partition written
  exactly once (Delta history), its run history in Postgres and its step logs in S3.
- A file dropped into the source folder goes, with nobody launching anything, from the sensor through every stage
  to the evaluation report (declarative automation with PERSONA_HUB_EXPANSION=off).
"""

import itertools
import json
import os
import uuid
from pathlib import Path

import boto3
import pytest
from deltalake import DeltaTable

from persona_hub_dagster.definitions import defs
from persona_hub_dagster.defs.automation import SETTINGS
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.conftest import REPO, S3_ENV
from persona_hub_dagster_tests.helpers.postgres import postgres_bin, postgres_server
from persona_hub_dagster_tests.helpers.small_settings import small_ops
from persona_hub_dagster_tests.helpers.topology import Topology, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.servers, pytest.mark.timeout(1500)]

if postgres_bin() is None:
    if os.environ.get("PERSONA_HUB_REQUIRE_E2E"):
        raise RuntimeError("PostgreSQL is missing and PERSONA_HUB_REQUIRE_E2E is set (apt-get install postgresql)")
    pytest.skip("needs Debian's postgresql (apt-get install postgresql)", allow_module_level=True)

LOG_PREFIX = "persona-hub/_logs"
SAMPLE = (REPO / "persona_hub_dagster" / "data" / "sample_corpus.jsonl").read_text().splitlines()
# Automated and backfilled runs carry no run config: the deployment's stage settings file sizes them.
TINY_STAGES = {
    "text_to_persona": {"max_texts": 2, "relations_per_text": 1, "max_tokens": 48},
    # Every task at its declared small size, one persona each; where this test asks for less (zero-shot, shorter
    # answers, single solutions), its own entries:
    **small_ops(
        personas=1,
        ops={
            "derive_demonstration_personas": {"max_tokens": 48},
            **{f"synthesize_{task}": {"personas": 1} for task in ("knowledge", "npc")},
            "synthesize_reasoning": {"personas": 1, "prompting": "few_shot", "shots": 1},
            "synthesize_instructions": {"personas": 1, "prompting": "persona_few_shot"},
            "synthesize_conversations": {"personas": 1, "turns": 2, "max_tokens": 120},
            "evaluate_math": {"reasoning_solutions": 1, "program_solutions": 1, "min_agreement": 1},
            "evaluate_reasoning": {"solutions": 1, "min_agreement": 1, "max_tokens": 128},
            **{
                f"evaluate_{task}": {"max_tokens": 64} for task in ("instructions", "conversations", "knowledge", "npc")
            },
        },
    ),
}


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture
def deployment(tmp_path, postgres, moto_endpoint):
    """A fresh database, bucket, storage root and source folder, and the environment every process gets."""
    database, bucket = f"dagster_{uuid.uuid4().hex[:8]}", f"persona-hub-{uuid.uuid4().hex[:8]}"
    postgres.create_database(database)
    aws = {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=aws["AWS_REGION"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=bucket)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "stages.json").write_text(json.dumps(TINY_STAGES))
    env = {
        **postgres.env(database),
        **aws,
        "DAGSTER_MAX_CONCURRENT_RUNS": "3",
        "PERSONA_HUB_BUCKET": bucket,
        "PERSONA_HUB_LOG_PREFIX": LOG_PREFIX,
        "PERSONA_HUB_STORAGE": str(tmp_path / "delta"),
        "PERSONA_HUB_SOURCE": str(tmp_path / "corpus"),
        "PERSONA_HUB_POOL_LIMITS": "persona_hub=1,llm=1",
        "PERSONA_HUB_STAGE_SETTINGS": str(tmp_path / "stages.json"),
        "PERSONA_HUB_TICK_SECONDS": "5",
    }
    return {"tmp": tmp_path, "env": env, "database": database, "bucket": bucket, "s3": s3}


def shard_file(folder: Path, key: str, lines: list[str]) -> Path:
    path = folder / f"{key}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def step_intervals(connection, runs: list[str], step: str) -> list[tuple]:
    """(start, end) of a step in each run, from the event log in Postgres."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT run_id, dagster_event_type, timestamp FROM event_logs WHERE run_id = ANY(%s) AND step_key = %s "
            "AND dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') ORDER BY timestamp",
            (runs, step),
        )
        events: dict[str, dict[str, object]] = {}
        for run_id, kind, timestamp in cursor.fetchall():
            events.setdefault(run_id, {})[kind] = timestamp
    return [(e["STEP_START"], e["STEP_SUCCESS"]) for e in events.values()]


def data_commits(store: DeltaStore, table: tables.Table) -> list[dict]:
    """The table's Delta commits that wrote rows, with the run that wrote each (commit metadata)."""
    history = DeltaTable(store.table_uri(table)).history()
    return [commit for commit in history if commit.get("dagster.run_id")]


def test_a_backfill_survives_a_killed_daemon_and_holds_the_pool_limits(deployment, postgres):
    # Two runs at once: the third waits in the queue, and the two running hub steps contend for the hub's pool.
    tmp = deployment["tmp"]
    env = {**deployment["env"], "PERSONA_HUB_AUTOMATION": "0", "DAGSTER_MAX_CONCURRENT_RUNS": "2"}
    shards = {key: shard_file(tmp / "corpus", key, SAMPLE[i * 2 : i * 2 + 2]) for i, key in enumerate("abc")}
    topology = Topology(tmp, env)
    try:
        for key, path in shards.items():
            topology.cli("persona-hub", "register-shard", str(path), "--key", key)
        topology.start_all()
        selected = ["raw_text", "raw_text_rejects", "text_personas", "text_personas_rejects", "persona_hub"]
        backfill_id = topology.launch_backfill(
            "process_text_shard", sorted(shards), [*selected, "persona_hub_decisions"]
        )

        # Kill -9 the daemon in the middle: two runs executing (the run limit), the third still in its queue. (Not
        # while it launches a run: a run it marked STARTING and never handed to the code server waits for run
        # monitoring's start timeout, 10 minutes, and then for a retry; that is Dagster's recovery, too slow here.)
        connection = postgres.connect(deployment["database"])
        connection.autocommit = True

        def statuses() -> dict[str, int]:
            with connection.cursor() as cursor:
                cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
                return dict(cursor.fetchall())

        wait_until(lambda: statuses() == {"STARTED": 2, "QUEUED": 1}, 300, "two runs started, one queued", interval=0.2)
        topology.kill("daemon")
        assert topology.backfill(backfill_id)["status"] == "REQUESTED"
        assert statuses().get("QUEUED") == 1, "the queue is the daemon's: with it dead, the third run waits"
        topology.start("daemon")

        done = wait_until(
            lambda: (b := topology.backfill(backfill_id))["status"] != "REQUESTED" and b,
            900,
            "the backfill to finish after the daemon restarted",
        )
        assert done["status"] == "COMPLETED_SUCCESS", (done, topology.log("daemon")[-3000:])
        runs = [run["runId"] for run in done["runs"]]
        assert len(runs) == 3 and all(run["status"] == "SUCCESS" for run in done["runs"]), done

        # The run history is in Postgres.
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (runs,))
            assert {row[1] for row in cursor.fetchall()} == {"SUCCESS"}
            cursor.execute(
                "SELECT count(*) FROM run_tags WHERE key = 'dagster/backfill' AND value = %s", (backfill_id,)
            )
            assert cursor.fetchone()[0] == 3

        # Pools: the hub's steps never overlap (limit 1), nor do the LLM steps (llm=1 here), across the three runs.
        for step in ("build_persona_hub", "text_to_persona"):
            intervals = sorted(step_intervals(connection, runs, step))
            assert len(intervals) == 3, (step, intervals)
            for (_, first_end), (second_start, _) in itertools.pairwise(intervals):
                assert first_end <= second_start, f"two {step} steps overlapped: {intervals}"

        # Every partition written exactly once, by the backfill's runs, with the right rows.
        store = DeltaStore(root=env["PERSONA_HUB_STORAGE"])
        for table in (tables.RAW_TEXT, tables.TEXT_PERSONAS, tables.PERSONA_HUB):
            commits = data_commits(store, table)
            assert len(commits) == 3 and {c["dagster.run_id"] for c in commits} == set(runs), (table.name, commits)
        for key in shards:
            assert store.row_count(tables.RAW_TEXT, [key]) == 2
            # Two texts, one relation each: two outputs, each a persona or a reject; every persona has a hub decision.
            personas = store.row_count(tables.TEXT_PERSONAS, [key])
            assert personas + store.row_count(tables.TEXT_TO_PERSONA.rejects, [key]) == 2
            assert store.row_count(tables.PERSONA_HUB_DECISIONS, [key]) == personas

        # Step logs are in S3 under the configured prefix, and readable back.
        s3, bucket = deployment["s3"], deployment["bucket"]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=LOG_PREFIX)["Contents"]]
        for run_id in runs:
            # One capture per run process (its steps run in-process), named by a key Dagster makes up.
            step_logs = [k for k in keys if f"/{run_id}/" in k and k.endswith(".err")]
            assert step_logs, (run_id, keys)
            text = "".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in step_logs)
            assert "text_personas" in text and "rows" in text, text[-2000:]
        connection.close()
    finally:
        topology.stop()


def test_a_dropped_file_flows_to_the_evaluation_report_on_its_own(deployment, postgres):
    tmp = deployment["tmp"]
    env = {**deployment["env"], "PERSONA_HUB_AUTOMATION": "1", "PERSONA_HUB_EXPANSION": "off"}
    topology = Topology(tmp, env)
    store = DeltaStore(root=env["PERSONA_HUB_STORAGE"])
    connection = postgres.connect(deployment["database"])
    connection.autocommit = True

    def materialized(partition: str | None) -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                "AND partition IS NOT DISTINCT FROM %s",
                (partition,),
            )
            return {"/".join(json.loads(row[0])) for row in cursor.fetchall()}  # keys are stored as JSON lists

    try:
        topology.start_all()
        wait_until(lambda: "demonstrations" in materialized(None), 600, "automation to derive the demonstrations")
        shard_file(tmp / "corpus", "harbour", SAMPLE[:2])  # the file lands; nobody launches anything

        graph = defs.get_repository_def().asset_graph
        expected = {
            key.to_user_string()
            for key in graph.get_all_asset_keys()
            if key.path[0] in ("synthetic", "eval") and graph.get(key).is_partitioned
        }
        wait_until(
            lambda: expected <= materialized("harbour") and "eval/report" in materialized(None),
            1200,
            "the shard to reach every evaluation and the report",
            interval=5,
        )
        assert {"raw_text", "text_personas", "persona_hub"} <= materialized("harbour")
        assert "harbour" in store.scan(tables.EVAL_REPORT).collect()["shard"].to_list()
        assert "expanded_personas" not in materialized("harbour")

        # Every run came from a sensor; runs of LLM stages asked for the larger task.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.run_id, coalesce(s.value, ''), coalesce(c.value, '') FROM runs r "
                "LEFT JOIN run_tags s ON s.run_id = r.run_id AND s.key = 'dagster/sensor_name' "
                "LEFT JOIN run_tags c ON c.run_id = r.run_id AND c.key = 'ecs/cpu'"
            )
            launched = cursor.fetchall()
        assert {sensor for _, sensor, _ in launched} <= {"text_shard_sensor", "stage_automation", "automation"}
        assert {cpu for _, sensor, cpu in launched if sensor == "stage_automation"} == {str(SETTINGS.llm_run_cpu)}
    finally:
        topology.stop()
        connection.close()

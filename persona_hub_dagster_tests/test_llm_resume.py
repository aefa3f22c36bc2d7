"""Crash and resume for real: a stage process using the embedded model is killed mid-way, then run again."""

import json
import subprocess
import sys

import pytest

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import LLM_RESPONSES
from persona_hub_dagster_tests.helpers.killed_run import SCRIPT, kill_once_committed

N, BATCH = 24, 4


@pytest.mark.llm
@pytest.mark.timeout(600)
def test_a_killed_run_resumes_from_the_cache_without_lost_or_duplicated_rows(tmp_path):
    root = str(tmp_path / "delta")
    store = DeltaStore(root=root)
    finished_calls = kill_once_committed([sys.executable, str(SCRIPT), root, str(N), str(BATCH)], store, 2 * BATCH)
    assert BATCH <= finished_calls < N and finished_calls % BATCH == 0  # whole batches, committed atomically
    assert not store.exists("resume_output")

    second = subprocess.run(
        [sys.executable, str(SCRIPT), root, str(N), str(BATCH)], capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    usage = json.loads(second.stdout.strip().splitlines()[-1])

    output = store.read("resume_output")
    assert output.height == N and output["item_id"].n_unique() == N  # nothing lost, nothing twice
    assert usage["cache_hits"] >= 0.95 * finished_calls
    assert usage["calls"] == N - usage["cache_hits"]  # only the missing calls were paid for
    assert store.row_count(LLM_RESPONSES) == N

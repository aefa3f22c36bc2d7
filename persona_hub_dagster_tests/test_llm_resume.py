"""Crash and resume for real: a stage process using the embedded model is killed mid-way, then run again."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import LLM_RESPONSES

STAGE = Path(__file__).parent / "helpers" / "resumable_stage.py"
N, BATCH = 24, 4


def kill_once_committed(command: list[str], store: DeltaStore, at_least: int, timeout: float = 300) -> int:
    """Run a stage process until the response cache holds `at_least` answers, then SIGKILL it (no cleanup, no chance
    to write anything more). Returns the answers it had committed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    committed = 0
    while committed < at_least and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
        committed = store.row_count(LLM_RESPONSES) if store.exists(LLM_RESPONSES) else 0
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return store.row_count(LLM_RESPONSES)


@pytest.mark.timeout(600)
def test_a_killed_run_resumes_from_the_cache_without_lost_or_duplicated_rows(tmp_path):
    root = str(tmp_path / "delta")
    store = DeltaStore(root=root)
    finished_calls = kill_once_committed([sys.executable, str(STAGE), root, str(N), str(BATCH)], store, 2 * BATCH)
    assert BATCH <= finished_calls < N and finished_calls % BATCH == 0  # whole batches, committed atomically
    assert not store.exists("resume_output")

    second = subprocess.run(
        [sys.executable, str(STAGE), root, str(N), str(BATCH)], capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    usage = json.loads(second.stdout.strip().splitlines()[-1])

    output = store.read("resume_output")
    assert output.height == N and output["item_id"].n_unique() == N  # nothing lost, nothing twice
    assert usage["cache_hits"] >= 0.95 * finished_calls
    assert usage["calls"] == N - usage["cache_hits"]  # only the missing calls were paid for
    assert store.row_count(LLM_RESPONSES) == N

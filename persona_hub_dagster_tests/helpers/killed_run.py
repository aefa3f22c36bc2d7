"""A stage process (helpers/resumable_stage.py) killed with SIGKILL once it has committed some answers: the crash of
test_llm_resume (embedded model) and test_llm_window (a model server)."""

import signal
import subprocess
import time
from pathlib import Path

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import LLM_RESPONSES

SCRIPT = Path(__file__).parent / "resumable_stage.py"


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

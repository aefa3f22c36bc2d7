"""The persona-hub command as users run it: a real subprocess of this checkout's CLI (test_cli, test_persona_shards)."""

import subprocess
import sys

from persona_hub_dagster_tests.conftest import REPO


def persona_hub(env, *args, check=True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "persona_hub_dagster.cli", *args]
    # The demo is the longest command: ~7 minutes alone on 2 cores, more beside another test worker.
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result

"""The code stays lint-clean and formatted (ruff, configured in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"
PATHS = ["persona_hub_dagster", "persona_hub_dagster_tests", "bench", "infra/cdk"]


def test_ruff_check():
    result = subprocess.run([str(RUFF), "check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format():
    result = subprocess.run([str(RUFF), "format", "--check", *PATHS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + "\nrun: .venv/bin/ruff format " + " ".join(PATHS)

"""The sandbox that runs model-written programs: results come back, and each limit holds."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from persona_hub_dagster.lib.evaluation import sandbox
from persona_hub_dagster.lib.evaluation.sandbox import (
    ProgramExecution,
    SandboxLimits,
    SandboxUnavailable,
    program_execution,
    run_python,
)


def test_a_program_prints_its_answer():
    result = run_python("from fractions import Fraction\nprint(Fraction(3, 4) + Fraction(1, 4) * 2)\n")
    assert result.ok and result.stdout.strip() == "5/4" and result.failure is None


def test_an_error_is_reported_with_its_message():
    result = run_python("print(1 / 0)\n")
    assert not result.ok and "ZeroDivisionError" in result.failure


def test_a_runaway_loop_is_stopped_by_the_time_limit():
    result = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0, cpu_s=1))
    assert result.timed_out and result.failure == "timeout"
    assert result.seconds < 10


def test_a_sleeping_program_is_stopped_by_the_wall_clock():
    result = run_python("import time\ntime.sleep(30)\n", SandboxLimits(timeout_s=1.0))
    assert result.timed_out and result.seconds < 10


def test_memory_beyond_the_limit_fails():
    result = run_python("block = bytearray(800 * 1024 * 1024)\nprint(len(block))\n", SandboxLimits(memory_mb=256))
    assert not result.ok and "MemoryError" in result.stderr


def test_network_is_refused():
    # A real listener on loopback: the program must not reach it.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True).start()
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    result = run_python(program)
    server.close()
    assert not result.ok and "connected" not in result.stdout
    assert "PermissionError" in result.stderr or "Network is unreachable" in result.stderr
    assert accepted in ([], [None])


def test_writes_outside_the_sandbox_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')\n")
    assert not result.ok and "PermissionError" in result.stderr
    assert not target.exists()


def test_writes_inside_the_sandbox_directory_work():
    result = run_python("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())\n")
    assert result.ok and result.stdout.strip() == "ok"


def test_new_processes_are_refused():
    result = run_python("import subprocess\nprint(subprocess.run(['true']).returncode)\n")
    assert not result.ok and "PermissionError" in result.stderr
    result = run_python("import os\nos.system('true')\n")
    assert not result.ok and "PermissionError" in result.stderr


def test_huge_files_are_cut_by_the_file_size_limit():
    result = run_python("open('big.bin', 'wb').write(b'0' * (8 * 1024 * 1024))\n", SandboxLimits(file_size_mb=1))
    assert not result.ok


def test_the_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("PERSONA_HUB_LLM_API_KEY", "secret-value")
    result = run_python("import os\nprint(os.environ.get('PERSONA_HUB_LLM_API_KEY'))\n")
    assert result.ok and result.stdout.strip() == "None"


def _accept(server: socket.socket):
    try:
        server.settimeout(5)
        connection, _ = server.accept()
        connection.close()
        return "accepted"
    except OSError:
        return None


@pytest.fixture(autouse=True)
def _no_stray_files():
    before = set(Path("/tmp").glob("persona-hub-sandbox-*"))
    yield
    # Another test worker's sandboxed program may hold a working directory of its own for a moment: a stray one is
    # one that stays.
    deadline = time.monotonic() + 30
    while not set(Path("/tmp").glob("persona-hub-sandbox-*")) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(Path("/tmp").glob("persona-hub-sandbox-*")) <= before


@pytest.fixture
def no_bubblewrap(monkeypatch):
    """A machine without bubblewrap, as a fresh laptop is."""
    which = shutil.which
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda name, *args, **kw: None if name == "bwrap" else which(name, *args, **kw)
    )
    sandbox._bwrap.cache_clear()
    yield
    sandbox._bwrap.cache_clear()


def test_without_bubblewrap_each_mode_does_what_it_says(no_bubblewrap, monkeypatch):
    monkeypatch.delenv(sandbox.SANDBOX_ENV, raising=False)
    # auto, the default: programs are not run, and the reason is short enough for a row.
    assert program_execution() == ProgramExecution(None, "sandbox unavailable: bubblewrap is not installed")
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "auto")
    assert not program_execution().runs
    with pytest.raises(SandboxUnavailable, match="needs bubblewrap"):
        run_python("print(1)\n")  # nothing runs outside the boundary unless a person chose weak
    # bwrap fails closed, with what to do.
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "bwrap")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap.*PERSONA_HUB_SANDBOX=weak"):
        program_execution()
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "weak")
    assert program_execution() == ProgramExecution("weak", None)
    assert run_python("print(1)\n").stdout.strip() == "1"
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "off")
    assert program_execution().not_run == "programs are off (PERSONA_HUB_SANDBOX=off)"
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)\n")
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "bwarp")
    with pytest.raises(SandboxUnavailable, match="must be one of auto, bwrap, weak, off"):
        program_execution()


def test_off_never_runs_a_program_even_where_the_sandbox_works(monkeypatch):
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "off")
    assert program_execution() == ProgramExecution(None, "programs are off (PERSONA_HUB_SANDBOX=off)")

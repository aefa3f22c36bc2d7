"""The escapes a probe found in the in-process sandbox, against the operating-system boundary (bubblewrap): each
program first disarms the runner's audit hook (as the probe did, through sys.modules['__main__']), so what is tested
is the boundary itself. Every one must fail, or have no effect outside."""

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from persona_hub_dagster.lib.evaluation import sandbox
from persona_hub_dagster.lib.evaluation.sandbox import SandboxLimits, SandboxUnavailable, run_python

# What the probe did: replace the hook's code, so the in-process layer allows everything.
DISARM = "import sys\nsys.modules['__main__']._hook.__code__ = (lambda event, args: None).__code__\n"


@pytest.fixture(autouse=True)
def bubblewrap(monkeypatch):
    monkeypatch.setenv(sandbox.SANDBOX_ENV, "bwrap")
    try:
        sandbox._bwrap()
    except SandboxUnavailable as exc:
        if os.environ.get("PERSONA_HUB_REQUIRE_E2E"):
            raise
        pytest.skip(f"no usable bubblewrap here: {exc}")


def survivors() -> list[int]:
    """Sandboxed processes still alive on the host (their command line names the runner inside the boundary)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/work/runner.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_normal_program_still_runs_and_prints_its_answer():
    result = run_python("import math, fractions, statistics, json\nprint(json.dumps(round(math.pi * 4, 3)))\n")
    assert result.ok and result.stdout.strip() == "12.566" and result.network_isolated


def test_the_disarmed_hook_really_is_disarmed():
    """The escapes below bypass the in-process layer; this shows it (os.fork works once the hook is gone)."""
    armed = run_python("import os\nos.fork()\n")
    assert not armed.ok and "PermissionError: sandbox: os.fork" in armed.stderr
    disarmed = run_python(DISARM + "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint('forked')\n")
    assert disarmed.ok and disarmed.stdout.strip() == "forked"


def test_no_program_or_shell_can_be_started():
    for attempt in (
        "import subprocess\nsubprocess.run(['id'])\n",
        "import os\nos.system('id > /work/id.txt')\nprint(open('/work/id.txt').read())\n",
        "import _posixsubprocess, os\n"  # the probe's low-level call, which audit hooks never see
        "r, w = os.pipe()\n"
        "_posixsubprocess.fork_exec([b'/usr/bin/id'], [b'/usr/bin/id'], True, (), None, None, -1, -1, -1, w, -1, -1,"
        " r, w, True, False, -1, None, None, None, -1, None, False)\n",
    ):
        result = run_python(DISARM + attempt)
        assert "uid=" not in result.stdout, attempt
        assert not result.ok or not result.stdout.strip(), attempt


def test_files_outside_cannot_be_read_or_written(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    target = tmp_path / "escaped.txt"
    program = DISARM + (
        f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as exc:\n    print('read failed', exc)\n"
        f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept OSError as exc:\n    print('write failed', exc)\n"
        "for path in ('/etc/passwd', '/root', '/home'):\n"
        "    print(path, __import__('os').path.exists(path))\n"
        "try:\n    open('/usr/lib/escaped', 'w')\nexcept OSError as exc:\n    print('usr', type(exc).__name__)\n"
    )
    result = run_python(program)
    assert "the host's secret" not in result.stdout and "read failed" in result.stdout
    assert not target.exists()
    assert "/etc/passwd False" in result.stdout and "/root False" in result.stdout
    assert "usr OSError" in result.stdout or "usr PermissionError" in result.stdout


def test_the_parents_environment_and_processes_are_invisible(monkeypatch):
    monkeypatch.setenv("PERSONA_HUB_LLM_API_KEY", "sk-parent-secret")
    program = DISARM + (
        "import os\n"
        f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read())\nexcept OSError as exc:\n"
        "    print('environ failed', type(exc).__name__)\n"
        "leaked = []\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n            leaked.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "        except OSError:\n            pass\n"
        "print('visible', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print('secret' if any(b'sk-parent-secret' in e for e in leaked) else 'no secret')\n"
        "print(os.environ.get('PERSONA_HUB_LLM_API_KEY'))\n"
    )
    result = run_python(program)
    assert result.ok, result.stderr
    assert (
        "environ failed" in result.stdout and "no secret" in result.stdout and "sk-parent-secret" not in result.stdout
    )
    visible = eval(result.stdout.split("visible ", 1)[1].splitlines()[0])
    assert max(visible) < 20, "only the sandbox's own processes"


def test_signals_and_pidfds_do_not_reach_host_processes():
    target = subprocess.Popen(["sleep", "60"])
    try:
        program = DISARM + (
            "import os, signal, ctypes\n"
            f"for attempt in ('kill', 'pidfd', 'ctypes'):\n"
            "    try:\n"
            f"        if attempt == 'kill':\n            os.kill({target.pid}, signal.SIGKILL)\n"
            f"        elif attempt == 'pidfd':\n            signal.pidfd_send_signal(os.pidfd_open({target.pid}), "
            "signal.SIGKILL)\n"
            f"        else:\n            print('libc kill', ctypes.CDLL(None).kill({target.pid}, 9))\n"
            "        print(attempt, 'sent')\n"
            "    except OSError as exc:\n        print(attempt, 'failed', exc.errno)\n"
        )
        result = run_python(program)
        time.sleep(0.3)
        assert target.poll() is None, "the host process was killed from the sandbox"
        assert "kill failed" in result.stdout and "pidfd failed" in result.stdout
    finally:
        target.kill()
        target.wait()


def test_no_socket_reaches_a_host_listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    accepted = []
    threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True).start()
    port = server.getsockname()[1]
    result = run_python(
        DISARM + f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
    )
    time.sleep(0.5)
    server.close()
    assert "connected" not in result.stdout and not result.ok
    assert accepted in ([], [None])


def test_a_fork_bomb_stops_at_the_process_limit():
    program = DISARM + (
        "import os, time\nn = 0\n"
        "try:\n"
        "    while n < 5000:\n"
        "        if os.fork() == 0:\n            time.sleep(2)\n            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n    print('stopped after', n, exc.errno)\n"
    )
    result = run_python(program, SandboxLimits(timeout_s=5, processes=16))
    assert "stopped after" in result.stdout, result.stderr
    assert int(result.stdout.split("stopped after ")[1].split()[0]) <= 16
    time.sleep(0.5)
    assert not survivors()


def test_a_child_that_leaves_the_session_does_not_outlive_the_timeout(tmp_path):
    program = DISARM + (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\ntime.sleep(30)\n"
    )
    started = time.monotonic()
    result = run_python(program, SandboxLimits(timeout_s=1.5))
    assert result.timed_out
    deadline = time.monotonic() + 5
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivors() and time.monotonic() - started < 15


def test_an_8_gb_allocation_and_an_endless_loop_fail():
    memory = run_python(DISARM + "block = bytearray(8 * 1024**3)\nprint(len(block))\n")
    assert not memory.ok and "MemoryError" in memory.stderr
    loop = run_python(DISARM + "while True:\n    pass\n", SandboxLimits(timeout_s=1.0, cpu_s=1))
    assert loop.timed_out and loop.failure == "timeout"


def test_ctypes_is_refused_by_the_hook_and_harmless_past_it(tmp_path):
    refused = run_python("import ctypes\nctypes.CDLL(None)\n")
    assert not refused.ok and "PermissionError" in refused.stderr
    target = tmp_path / "via-ctypes.txt"
    past = run_python(
        DISARM + f"import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.creat({str(target).encode()!r}, 0o644))\n"
    )
    assert not target.exists() and past.stdout.strip() == "-1"


def test_without_bubblewrap_programs_refuse_to_run_unless_the_weak_mode_is_chosen(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._bwrap.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="needs bubblewrap.*PERSONA_HUB_SANDBOX=weak"):
            run_python("print(1)\n")
        monkeypatch.setenv(sandbox.SANDBOX_ENV, "weak")
        assert run_python("print(1)\n").stdout.strip() == "1"
    finally:
        sandbox._bwrap.cache_clear()


def _accept(server: socket.socket):
    try:
        connection, _ = server.accept()
        connection.close()
        return "accepted"
    except OSError:
        return None

"""Running a model-written Python program: in a child process, in a fresh temporary directory, with limits.

Layers, each of which alone stops the common accident (a runaway loop, a huge allocation, a stray write or request):
- resource limits set in the child before it runs anything: CPU seconds, address space, file size, open files;
  a wall-clock timeout in the parent kills the whole process group;
- an audit hook installed before the program runs (PEP 578; it cannot be removed) refuses sockets, new processes,
  writes outside the temporary directory, and loading native libraries through ctypes;
- where the system allows it (`unshare --net`, as root or with unprivileged user namespaces), the child also runs
  in a network namespace with no interface at all;
- isolated mode (-I, -B): no user site-packages, no PYTHON* variables, no bytecode files, an empty environment.
This is a guard against accidents and careless code, not a security boundary against a determined attacker: for
untrusted models at scale, run the evaluation step in a container without network (see README: Scaling).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

OUTPUT_LIMIT = 64 * 1024  # characters of stdout/stderr kept

# Runs in the child: limits, then the audit hook, then the program. Receives: sandbox dir, program path.
_RUNNER = r"""
import builtins, os, sys
sandbox = os.path.realpath(sys.argv[1])
program = sys.argv[2]
_write_modes = set("wax+")

def _inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return real == sandbox or real.startswith(sandbox + os.sep)

def _hook(event, args):
    if event.startswith("socket.") or event in {"subprocess.Popen", "os.system", "os.posix_spawn", "os.fork",
            "os.forkpty", "os.exec", "os.spawn", "ctypes.dlopen", "ctypes.cdata", "os.kill", "os.killpg",
            "pty.spawn", "sys.remote_exec"}:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode = args[0], args[1]
        writing = isinstance(mode, str) and bool(_write_modes & set(mode))
        if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            writing = True
        if writing and not isinstance(path, int) and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
    if event in {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
            "os.truncate", "shutil.rmtree", "os.utime"}:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

with open(program, encoding="utf-8") as handle:
    source = handle.read()
code = compile(source, "program.py", "exec")
sys.addaudithook(_hook)
sys.argv = ["program.py"]
exec(code, {"__name__": "__main__", "__builtins__": builtins})
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, the whole process
    cpu_s: int = 5
    memory_mb: int = 512  # address space
    file_size_mb: int = 1  # largest file the program may write (in its directory)
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    seconds: float
    network_isolated: bool  # whether the child ran in its own network namespace

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0

    @property
    def failure(self) -> str | None:
        """None when the program ran to completion; otherwise a short reason."""
        if self.timed_out:
            return "timeout"
        if self.returncode == 0:
            return None
        last = self.stderr.strip().splitlines()[-1:] or [f"exit status {self.returncode}"]
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode} ({signal.Signals(-self.returncode).name})"
        return f"error: {last[0][:300]}"


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    limits = limits or SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="persona-hub-sandbox-") as workdir:
        work = Path(workdir)
        (work / "program.py").write_text(source, encoding="utf-8")
        (work / "runner.py").write_text(_RUNNER, encoding="utf-8")
        command = [sys.executable, "-I", "-B", str(work / "runner.py"), str(work), str(work / "program.py")]
        isolated = _network_namespace_prefix()
        started = time.perf_counter()
        process = subprocess.Popen(
            [*isolated, *command],
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C.UTF-8"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, killed as a whole
            preexec_fn=lambda: _apply_limits(limits),
        )
        timed_out = False
        try:
            stdout, stderr = process.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
            stdout, stderr = process.communicate()
        return SandboxResult(
            stdout=stdout[:OUTPUT_LIMIT],
            stderr=stderr[-OUTPUT_LIMIT:],
            returncode=process.returncode,
            timed_out=timed_out or process.returncode == -signal.SIGXCPU,
            seconds=time.perf_counter() - started,
            network_isolated=bool(isolated),
        )


def _apply_limits(limits: SandboxLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_size_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@cache
def _network_namespace_prefix() -> tuple[str, ...]:
    """`unshare` arguments that give the child an empty network namespace, when this system allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--net", "--map-root-user")):
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()

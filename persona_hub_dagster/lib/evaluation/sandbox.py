"""Running a model-written Python program behind an operating-system boundary.

The boundary is bubblewrap (`bwrap`, Flatpak's sandbox; Debian's `bubblewrap` package). Each program runs:
- in new user, PID, network, IPC, UTS and cgroup namespaces: no network interface, no host process visible (its own
  /proc), so no signal, pidfd or /proc/<pid>/environ reaches the parent or anything else on the host;
- on a read-only view of only what the interpreter needs (its binary, the standard library, the shared libraries)
  and nothing else of the host: no shell or other program, no home, no /etc, no project files; its only writable
  place is a private tmpfs working directory;
- as an unprivileged user (as root, a fresh uid of its own per program, dropped to before bwrap starts), with an
  empty environment, in a new session, with rlimits on CPU seconds, address space, file size, open files and
  processes (a fork bomb stops at the limit);
- killed as a whole on timeout: bwrap dies with its parent and takes the namespace, and every process in it
  (a child that called setsid included), down with it.
Inside, the audit hook of the runner (PEP 578) still refuses sockets, subprocesses, ctypes and writes outside the
working directory: a second layer, which a program could tamper with, but only inside the boundary.

Where bwrap is missing or cannot create namespaces (some laptops, some containers), what happens is the mode's
(PERSONA_HUB_SANDBOX, decided once per evaluation step by `program_execution()`):
- `auto` (the default): programs are not run, and the evaluation goes on without them and says why on every row
  (eval/math verifies with its reasoning solutions; eval/tools marks items "not run", neither passed nor failed).
  A fresh laptop's `make demo` works; nothing runs outside the boundary.
- `bwrap`: fail closed: a step that would run programs fails with what to install. Deployments that must execute
  programs set it (the production image and the CDK stack do).
- `weak`: a person's opt-in to the weaker mode: the runner's audit hook and limits in a plain child process (plus an
  empty network namespace where `unshare --net` works). It stops accidents, not a determined program.
- `off`: never run programs (the evaluations go on as in `auto`).

One module of about 400 lines, on purpose: the namespaces, mounts, privilege drop, limits and audit-hook runner
make one security boundary, read and reviewed together; split across modules, no one place would show it whole.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SANDBOX_ENV = "PERSONA_HUB_SANDBOX"
SANDBOX_MODES = ("auto", "bwrap", "weak", "off")  # see the module's docstring; auto is the default
SANDBOX_UIDS = (2_000_000, 3_000_000)  # as root: a uid from this range per program, owned by no account
WORKDIR = "/work"  # where the program runs inside the boundary
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


class SandboxUnavailable(RuntimeError):
    """The operating-system sandbox cannot run here (and the weaker mode was not chosen). `cause` is the short why
    ("bubblewrap is not installed"), for rows and summaries; the message adds what to do."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message


ENABLE_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow unprivileged user namespaces, or set "
    f"{SANDBOX_ENV}=weak to accept the weaker in-process sandbox (see docs/explanation/security.md)"
)


def sandbox_mode() -> str:
    mode = os.environ.get(SANDBOX_ENV) or "auto"
    if mode not in SANDBOX_MODES:
        raise SandboxUnavailable(
            f"{SANDBOX_ENV} must be one of {', '.join(SANDBOX_MODES)} (default auto), not {mode!r}",
            cause=f"{SANDBOX_ENV}={mode!r} is not a mode",
        )
    return mode


@dataclass(frozen=True)
class ProgramExecution:
    """Whether this evaluation step runs model-written programs, and behind what."""

    boundary: str | None  # bwrap | weak; None when programs are not run
    not_run: str | None  # why they are not run ("sandbox unavailable: bubblewrap is not installed"); None when they are

    @property
    def runs(self) -> bool:
        return self.boundary is not None


def program_execution() -> ProgramExecution:
    """Decided once per step, before any program is asked for: `auto` falls back to not running programs, `bwrap`
    raises SandboxUnavailable (fail closed), `weak` runs them in the weaker mode, `off` never runs them."""
    mode = sandbox_mode()
    if mode == "off":
        return ProgramExecution(None, f"programs are off ({SANDBOX_ENV}=off)")
    if mode == "weak":
        return ProgramExecution("weak", None)
    try:
        _bwrap()
    except SandboxUnavailable as exc:
        if mode == "bwrap":
            raise
        return ProgramExecution(None, f"sandbox unavailable: {exc.cause}")
    return ProgramExecution("bwrap", None)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, the whole process
    cpu_s: int = 5
    memory_mb: int = 512  # address space
    file_size_mb: int = 1  # largest file the program may write (in its directory)
    open_files: int = 64
    processes: int = 16  # processes (and threads) the program may have at once


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
    """Run `source` behind the boundary the mode allows: bubblewrap (auto and bwrap; SandboxUnavailable when it cannot
    run here: callers decide with `program_execution()` first) or, opted into, the weaker mode."""
    limits = limits or SandboxLimits()
    mode = sandbox_mode()
    if mode == "off":
        raise SandboxUnavailable(f"Programs are off ({SANDBOX_ENV}=off).", cause=f"{SANDBOX_ENV}=off")
    mode = "weak" if mode == "weak" else "bwrap"
    with tempfile.TemporaryDirectory(prefix="persona-hub-sandbox-") as workdir:
        work = Path(workdir)
        (work / "program.py").write_text(source, encoding="utf-8")
        (work / "runner.py").write_text(_RUNNER, encoding="utf-8")
        if mode == "bwrap":
            command, drop_to, isolated = _bwrap_command(work), _unprivileged_user(), True
            # The unprivileged user reads the two files through the bind mounts.
            work.chmod(0o755)
            for name in ("program.py", "runner.py"):
                (work / name).chmod(0o644)
        else:
            runner = [sys.executable, "-I", "-B", str(work / "runner.py"), str(work), str(work / "program.py")]
            prefix = _network_namespace_prefix()
            command, drop_to, isolated = [*prefix, *runner], None, bool(prefix)
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=work,
            env={"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LC_ALL": "C.UTF-8"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, killed as a whole
            preexec_fn=lambda: _apply_limits(limits, drop_to),
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
            network_isolated=isolated,
        )


def _bwrap_command(work: Path) -> list[str]:
    bwrap, interpreter = _bwrap(), _interpreter()
    command = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "HOME", WORKDIR,
        "--setenv", "TMPDIR", WORKDIR,
        "--setenv", "LC_ALL", "C.UTF-8",
        *_system_mounts(),
    ]  # fmt: skip
    command += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--tmpfs", WORKDIR,
        "--ro-bind", str(work / "runner.py"), f"{WORKDIR}/runner.py",
        "--ro-bind", str(work / "program.py"), f"{WORKDIR}/program.py",
        "--chdir", WORKDIR,
        interpreter, "-I", "-B", f"{WORKDIR}/runner.py", WORKDIR, f"{WORKDIR}/program.py",
    ]  # fmt: skip
    return command


def _system_mounts() -> list[str]:
    """Only what the interpreter needs, read-only: the libraries under /usr (the standard library, libc, the loader)
    and the interpreter's own installation; no shell and no other program, so a subprocess finds nothing to run."""
    interpreter = _interpreter()
    mounts = []
    for library in ("/usr/lib", "/usr/lib32", "/usr/lib64"):
        if os.path.isdir(library):
            mounts += ["--ro-bind", library, library]
    for top in ("/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            mounts += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            mounts += ["--ro-bind", top, top]
    prefix = Path(interpreter).parents[1]
    if str(prefix) == "/usr":
        mounts += ["--ro-bind", interpreter, interpreter]
    else:  # e.g. /opt/python3.11 or a pyenv build: its bin/ and lib/
        mounts += ["--ro-bind", str(prefix), str(prefix)]
    return mounts


@cache
def _bwrap() -> str:
    """bwrap, checked once to really create its namespaces here."""
    bwrap = shutil.which("bwrap")
    hint = f"To run them: {ENABLE_HINT}."
    if bwrap is None:
        raise SandboxUnavailable(
            f"Running model-written programs needs bubblewrap, which is not installed. {hint}",
            cause="bubblewrap is not installed",
        )
    probe = subprocess.run(
        # --proc as the real command mounts it: in a container without its own /proc rights (Docker's default
        # seccomp and systempaths) the namespaces come up but a fresh /proc is refused, and every program would fail.
        [
            bwrap, "--unshare-all", "--die-with-parent", *_system_mounts(), "--proc", "/proc",
            _interpreter(), "-I", "-c", "pass",
        ],
        capture_output=True,
        text=True,
        preexec_fn=lambda: _drop_privileges(_unprivileged_user()),
        timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create its namespaces here ({probe.stderr.strip()[:200]}): unprivileged user "
            f"namespaces may be disabled (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces). {hint}",
            cause="bubblewrap cannot create its namespaces here",
        )
    return bwrap


@cache
def _interpreter() -> str:
    """A Python 3 the sandboxed user can execute: this one, or the system's when this one is not world-readable
    (e.g. under /root). The program uses the standard library only."""
    candidates = [os.path.realpath(sys.executable), *(os.path.realpath(p) for p in ("/usr/bin/python3",))]
    for candidate in candidates:
        if os.path.isfile(candidate) and (_unprivileged_user() is None or _world_executable(candidate)):
            return candidate
    raise SandboxUnavailable(
        f"No Python interpreter that an unprivileged user can run for the sandbox ({', '.join(candidates)}); "
        "install the system's python3 (apt-get install python3-minimal).",
        cause="no Python interpreter the sandbox's user can run",
    )


def _world_executable(path: str) -> bool:
    """Readable and executable by others, and every folder above it searchable by others."""
    mode = os.stat(path).st_mode
    if not (mode & stat.S_IROTH and mode & stat.S_IXOTH):
        return False
    return all(os.stat(folder).st_mode & stat.S_IXOTH for folder in Path(path).parents)


def _unprivileged_user() -> int | None:
    """As root, each program runs as a fresh unprivileged uid of its own (rlimits on processes do not bind root, and
    a uid shared between concurrent programs would let them signal each other and share one process count);
    otherwise as this user."""
    return random.randrange(*SANDBOX_UIDS) if os.geteuid() == 0 else None


def _drop_privileges(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _processes_of(uid: int) -> int:
    """Processes and threads the user has now (the process limit counts them all, so it is set on top of them)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    count += len(os.listdir(f"{entry.path}/task"))
            except OSError:
                continue
    return count


def _apply_limits(limits: SandboxLimits, drop_to: int | None) -> None:
    """In the child, before the sandbox starts: every limit, then (as root) the unprivileged user."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.file_size_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_to is not None or os.environ.get(SANDBOX_ENV) != "weak":
        uid = drop_to if drop_to is not None else os.getuid()
        allowed = _processes_of(uid) + limits.processes + 2  # + bwrap and its namespace init
        resource.setrlimit(resource.RLIMIT_NPROC, (allowed, allowed))
    _drop_privileges(drop_to)


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

"""A model server that lives exactly as long as a run: started on 127.0.0.1, waited for, and stopped on success,
failure or interrupt.

Used for `vllm serve` on GPU nodes (`vllm_serve_command`), and tested for real with llama.cpp's OpenAI-compatible
server (`llama_cpp_server_command`), which needs no GPU. The server runs in its own process group, so stopping it
also stops the workers it spawned; on Linux it also gets SIGTERM if the process that started it dies without
cleaning up (a killed run worker), so no server outlives its run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def vllm_serve_command(
    model: str,
    *,
    port: int,
    host: str = "127.0.0.1",
    tensor_parallel_size: int = 1,
    max_num_seqs: int = 256,
    gpu_memory_utilization: float = 0.90,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """`vllm serve` with prefix caching on (persona prompts share long prefixes)."""
    command = [
        "vllm",
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--max-num-seqs",
        str(max_num_seqs),
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
        "--enable-prefix-caching",
    ]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return command + list(extra_args)


def llama_cpp_server_command(
    model_path: str, *, port: int, host: str = "127.0.0.1", n_ctx: int = 4096, n_threads: int = 1
) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server (the `server` extra)."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
    ]


class ManagedServer:
    """Context manager: `with ManagedServer(cmd, port=p, health_path="/health") as server: server.base_url`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        host: str = "127.0.0.1",
        health_path: str = "/health",
        startup_timeout_s: float = 600.0,
        stop_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
    ):
        self.command = list(command)
        self.host, self.port = host, port
        self.health_path = health_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.env = env
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="managed-server-", suffix=".log")[1])
        )
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("server already started")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except FileNotFoundError as exc:
            raise ServerStartError(f"cannot start {self.command[0]!r}: not installed ({exc})") from exc
        finally:
            log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it has not exited after stop_timeout_s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=self.stop_timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_healthy(self) -> None:
        url = f"http://{self.host}:{self.port}{self.health_path}"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{' '.join(self.command[:3])} exited with {self.process.returncode} before becoming healthy. "
                    f"Log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"{url} not healthy after {self.startup_timeout_s:.0f}s. Log ({self.log_path}):\n{self.log_tail()}"
        )


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

"""The OpenAI-compatible backend against a real server (llama.cpp's, on 127.0.0.1), and the managed-server machinery
that runs `vllm serve` in production, exercised with the same server since vLLM cannot run here."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_hub_dagster.lib.llm import LLMClient, LLMConfigError, LLMRequest, LLMSettings, SamplingParams, open_backend
from persona_hub_dagster.lib.llm.backends.llama_cpp import packaged_model_path
from persona_hub_dagster.lib.llm.backends.managed_server import (
    ManagedServer,
    ServerStartError,
    free_port,
    llama_cpp_server_command,
    vllm_serve_command,
)
from persona_hub_dagster.lib.llm.backends.openai_compatible import OpenAICompatibleBackend

pytestmark = pytest.mark.timeout(600)

SCHEMA = {
    "type": "object",
    "properties": {"persona": {"type": "string", "minLength": 3}},
    "required": ["persona"],
}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def llama_server(port: int) -> ManagedServer:
    command = llama_cpp_server_command(str(packaged_model_path()), port=port, n_ctx=1024)
    return ManagedServer(command, port=port, health_path="/v1/models", startup_timeout_s=120)


@pytest.fixture(scope="module")
def server():
    with llama_server(free_port()) as server:
        yield server


@pytest.mark.llm
@pytest.mark.servers
def test_plain_chat_against_a_real_server(server):
    backend = OpenAICompatibleBackend(server.base_url, None, max_in_flight=2)
    assert backend.model.endswith(".gguf")  # asked the server which model it serves
    requests = [
        LLMRequest.chat(f"Say the number {i} in words.", sampling=SamplingParams(max_tokens=12)) for i in range(3)
    ]
    completions = backend.complete(requests)
    assert all(c.error is None and c.text for c in completions)
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in completions)


@pytest.mark.llm
@pytest.mark.servers
def test_structured_output_falls_back_to_json_object_when_json_schema_is_rejected(server):
    backend = OpenAICompatibleBackend(server.base_url, None, max_in_flight=2)
    client = LLMClient(backend)
    requests = [
        LLMRequest.chat(
            f"Describe a reader of a text about {topic}.",
            json_schema=SCHEMA,
            sampling=SamplingParams(max_tokens=48),
            request_id=topic,
        )
        for topic in ("gardening", "tax law")
    ]
    responses = client.generate(requests)
    # llama-cpp-python's server answered 500 to json_schema and accepted json_object with a schema (a grammar).
    assert backend.structured_mode == "json_object+schema"
    assert all(r.ok for r in responses), [(r.error, r.text) for r in responses]
    assert all(isinstance(r.parsed["persona"], str) for r in responses)


@pytest.mark.llm
@pytest.mark.servers
def test_the_managed_server_path_of_the_vllm_backend(tmp_path):
    """open_backend(vllm, no base_url) starts a server, talks to it over HTTP, and stops it on exit."""
    settings = LLMSettings(backend="vllm", model=str(packaged_model_path()), server_startup_timeout_s=120)

    def serve(settings, port):
        return llama_cpp_server_command(settings.model, port=port, n_ctx=512)

    with open_backend(settings, serve_command=serve, health_path="/v1/models") as backend:
        assert backend.name == "vllm" and backend.base_url.startswith("http://127.0.0.1:")
        pid = _server_pid(backend.base_url)
        response = LLMClient(backend).generate([LLMRequest.chat("Hi!", sampling=SamplingParams(max_tokens=4))])[0]
        assert response.ok
    assert not alive(pid)


@pytest.mark.llm
@pytest.mark.servers
def test_a_failing_step_still_stops_the_server():
    port = free_port()
    with pytest.raises(RuntimeError, match="stage failed"):
        with llama_server(port) as server:
            pid = server.pid
            raise RuntimeError("stage failed")
    assert not alive(pid)


@pytest.mark.llm
@pytest.mark.servers
@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_an_interrupted_or_killed_run_does_not_leave_the_server_behind(how):
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "helpers" / "managed_server_child.py"),
            str(packaged_model_path()),
        ],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    server_pid = int(child.stdout.readline())
    assert alive(server_pid)
    child.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)  # Ctrl-C / a killed run worker
    child.wait(timeout=60)
    deadline = time.monotonic() + 30
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(server_pid)


def test_a_server_that_cannot_start_fails_fast_with_its_log():
    port = free_port()
    command = [sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"]
    with pytest.raises(ServerStartError, match="(?s)exited with 3.*CUDA out of memory"):
        ManagedServer(command, port=port, startup_timeout_s=30).start()


def test_vllm_command_line_and_missing_install():
    command = vllm_serve_command(
        "Qwen/Qwen2.5-7B-Instruct",
        port=8001,
        tensor_parallel_size=2,
        max_num_seqs=512,
        gpu_memory_utilization=0.85,
        max_model_len=8192,
    )
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    for flag, value in [
        ("--tensor-parallel-size", "2"),
        ("--max-num-seqs", "512"),
        ("--gpu-memory-utilization", "0.85"),
        ("--max-model-len", "8192"),
        ("--host", "127.0.0.1"),
    ]:
        assert command[command.index(flag) + 1] == value
    assert "--enable-prefix-caching" in command
    if subprocess.run(["which", "vllm"], capture_output=True).returncode != 0:
        with pytest.raises(LLMConfigError, match="vllm is not installed"):
            with open_backend(LLMSettings(backend="vllm", model="Qwen/Qwen2.5-7B-Instruct")):
                pass
    with pytest.raises(LLMConfigError, match="PERSONA_HUB_LLM_BASE_URL"):
        with open_backend(LLMSettings(backend="openai")):
            pass


def _server_pid(base_url: str) -> int:
    port = base_url.rsplit(":", 1)[1].split("/")[0]
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])

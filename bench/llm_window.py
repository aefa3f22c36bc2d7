"""Served-model throughput: the streaming window against today's batch-and-wait design, on a server of known shape.

    .venv/bin/python bench/llm_window.py                      # C in 8 64 256 1024, 10^4 requests each
    .venv/bin/python bench/llm_window.py --capacities 256 --requests 2000   # a quick run

The server (persona_hub_dagster_tests/helpers/openai_stub_server.py, its own process) answers every chat completion
after `--latency` seconds and serves at most C at once (the rest queue), so its ideal throughput is C / latency.
For each C:
  - baseline: what stages did before the window: batches of 32 requests, each sent by 8 threads, the next batch
    only when the whole batch is back (`--baseline-requests`, since it is slow by design);
  - window: `LLMClient.generate_batches` through `OpenAICompatibleBackend(max_in_flight=C)` with the Delta response
    cache on, as a stage runs it; plus the default window (256) where C differs.
Reported: requests/s, the share of ideal, and the client process's CPU time per request (all its threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from persona_hub_dagster.lib.llm import LLMClient, LLMRequest, SamplingParams  # noqa: E402
from persona_hub_dagster.lib.llm.backends.openai_compatible import OpenAICompatibleBackend  # noqa: E402
from persona_hub_dagster.lib.llm.cache import ResponseCache  # noqa: E402
from persona_hub_dagster.lib.llm.types import Completion  # noqa: E402
from persona_hub_dagster.lib.storage import DeltaStore  # noqa: E402
from persona_hub_dagster_tests.conftest import free_port  # noqa: E402


class BatchAndWait:
    """The design the window replaced: `complete` sends one batch through a pool of 8 threads (the sync `openai`
    client) and returns when all of it is back; LLMClient calls it once per batch of 32."""

    name, model, identity = "openai", "stub", "openai:stub"

    def __init__(self, base_url: str, threads: int = 8):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=4, timeout=120)
        self.threads = threads

    def _one(self, request: LLMRequest) -> Completion:
        started = time.perf_counter()
        sampling = request.sampling
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[dict(m) for m in request.messages],
            temperature=sampling.temperature,
            max_tokens=sampling.max_tokens,
        )
        choice = response.choices[0]
        return Completion(
            text=choice.message.content,
            finish_reason=choice.finish_reason,
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
            latency_s=time.perf_counter() - started,
        )

    def complete(self, requests):
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self._one, requests))

    def close(self):
        self.client.close()


def requests_for(n: int, salt: str) -> list[LLMRequest]:
    sampling = SamplingParams(temperature=0.7, max_tokens=16)
    return [LLMRequest.chat(f"request {salt}-{i}: say ok", sampling=sampling, request_id=str(i)) for i in range(n)]


def measure(client: LLMClient, requests: list[LLMRequest], batch_size: int = 32) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    answered = sum(len(batch) for batch in client.generate_batches(requests, batch_size))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert answered == len(requests) and client.usage.calls == len(requests), client.usage
    return {
        "requests": len(requests),
        "seconds": round(wall, 2),
        "rps": round(len(requests) / wall, 1),
        "cpu_ms_per_request": round(1000 * cpu / len(requests), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacities", type=int, nargs="+", default=[8, 64, 256, 1024])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--baseline-requests", type=int, default=480)
    parser.add_argument(
        "--max-seconds", type=float, default=90, help="fewer requests where the ideal run would take longer"
    )
    args = parser.parse_args()
    print(f"{date.today()} {platform.machine()} {os.cpu_count()} cores, latency {args.latency}s")
    for capacity in args.capacities:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "persona_hub_dagster_tests.helpers.openai_stub_server",
                "--port",
                str(port),
                "--latency",
                str(args.latency),
                "--capacity",
                str(capacity),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            server.stdout.readline()
            base_url = f"http://127.0.0.1:{port}/v1"
            ideal = capacity / args.latency
            row = {"capacity": capacity, "ideal_rps": ideal}
            with tempfile.TemporaryDirectory() as tmp:
                store = DeltaStore(root=tmp)
                baseline = LLMClient(BatchAndWait(base_url), cache=ResponseCache(store, "baseline"))
                row["baseline"] = measure(baseline, requests_for(args.baseline_requests, f"b{capacity}"))
                n = min(args.requests, int(ideal * args.max_seconds))
                for window in sorted({capacity, 256}):
                    backend = OpenAICompatibleBackend(base_url, None, max_in_flight=window)
                    client = LLMClient(backend, cache=ResponseCache(store, f"window{window}"))
                    result = measure(client, requests_for(n, f"w{capacity}-{window}"))
                    result["share_of_ideal"] = round(result["rps"] / ideal, 3)
                    row[f"window_{window}"] = result
                row["window_vs_baseline"] = round(row[f"window_{capacity}"]["rps"] / row["baseline"]["rps"], 1)
            print(json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""The streaming window against a real HTTP server of known shape (helpers/openai_stub_server.py, its own process):
it keeps the server full across the caller's batches, hands batches back in order, shrinks on 429s instead of
hammering, and a killed run resumes without paying again for what it committed."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from persona_hub_dagster.lib.llm import BackendFailure, LLMClient, LLMRequest, ResponseCache, SamplingParams
from persona_hub_dagster.lib.llm.backends.openai_compatible import OpenAICompatibleBackend
from persona_hub_dagster.lib.llm.window import AdaptiveWindow
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.tables import LLM_RESPONSES
from persona_hub_dagster_tests.conftest import REPO, free_port
from persona_hub_dagster_tests.helpers.killed_run import SCRIPT, kill_once_committed


class StubServer:
    def __init__(self, *, latency: float, capacity: int, reject_over_capacity: bool = False):
        self.port = free_port()
        command = [sys.executable, "-m", "persona_hub_dagster_tests.helpers.openai_stub_server"]
        command += ["--port", str(self.port), "--latency", str(latency), "--capacity", str(capacity)]
        if reject_over_capacity:
            command.append("--reject-over-capacity")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().startswith("ready")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def stub():
    servers = []

    def start(**shape) -> StubServer:
        servers.append(StubServer(**shape))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def requests(n: int, salt: str = "") -> list[LLMRequest]:
    return [
        LLMRequest.chat(f"{salt} request {i}", sampling=SamplingParams(max_tokens=8), request_id=str(i))
        for i in range(n)
    ]


@pytest.mark.servers
def test_the_window_keeps_the_server_full_across_batches_and_hands_batches_back_in_order(stub, local_store):
    server = stub(latency=0.2, capacity=12)
    client = LLMClient(
        OpenAICompatibleBackend(server.base_url, None, max_in_flight=12), cache=ResponseCache(local_store, "w")
    )
    asked = requests(120)
    batches = list(client.generate_batches(asked, 5))
    # Batches of 5, yet 12 in flight at once: no barrier between batches.
    assert server.stats()["max_serving"] == 12
    assert [len(b) for b in batches] == [5] * 24
    assert [r.request_id for b in batches for r in b] == [r.request_id for r in asked]
    assert all(r.ok for b in batches for r in b) and client.usage.calls == 120 and client.usage.requests == 120
    assert local_store.row_count(LLM_RESPONSES) == 120  # every answer committed

    # The same requests again: all from the cache, nothing sent.
    again = LLMClient(OpenAICompatibleBackend(server.base_url, None), cache=ResponseCache(local_store, "w"))
    assert sum(len(b) for b in again.generate_batches(asked, 7)) == 120
    assert again.usage.cache_hits == 120 and again.usage.calls == 0 and server.stats()["requests"] == 120


@pytest.mark.servers
def test_a_storm_of_429s_shrinks_the_window_instead_of_hammering(stub):
    """A server that takes 6 at a time and answers 429 beyond: the adaptive window finds its size; a fixed window
    of the same maximum keeps sending what cannot be served."""
    rejected = {}
    for adaptive in (True, False):
        server = stub(latency=0.1, capacity=6, reject_over_capacity=True)
        backend = OpenAICompatibleBackend(server.base_url, None, max_in_flight=64, adaptive=adaptive, max_retries=8)
        client = LLMClient(backend)
        try:
            answered = [r for b in client.generate_batches(requests(150, str(adaptive)), 10) for r in b]
            assert all(r.ok for r in answered) and len(answered) == 150
        except BackendFailure:
            assert not adaptive, "the adaptive window must get every request through"
        rejected[adaptive] = server.stats()["rejected"]
    assert rejected[True] * 3 < rejected[False], rejected


def test_the_window_halves_once_per_overload_and_grows_back():
    window = AdaptiveWindow(64)
    for _ in range(40):  # one overload: many 429s before any answer comes back
        window.throttled()
    assert window.limit == 32 and window.cuts == 1 and window.throttles == 40
    for _ in range(32):  # the requests in flight at the cut come back: a new round
        window.answered()
    window.throttled()
    assert window.limit == 16 and window.cuts == 2
    for _ in range(16 + 16 * 20):  # a quiet stretch: one more slot per window of answers
        window.answered()
    assert 16 < window.limit <= 64
    fixed = AdaptiveWindow(8, adaptive=False)
    fixed.throttled()
    assert fixed.limit == 8


@pytest.mark.servers
@pytest.mark.timeout(300)
def test_a_killed_streaming_run_resumes_without_paying_again_for_what_it_committed(stub, tmp_path):
    server = stub(latency=0.1, capacity=4)  # 40 answers a second: the run takes ~10 s, it is killed after ~1 s
    n, batch = 400, 8
    root = str(tmp_path / "delta")
    store = DeltaStore(root=root)
    command = [sys.executable, str(SCRIPT), root, str(n), str(batch), server.base_url]
    committed = kill_once_committed(command, store, 2 * batch, timeout=120)
    assert batch <= committed < n  # answers were committed as they arrived, before the end
    while server.stats()["serving"]:  # the killed run's requests in flight still finish (and count) at the server
        time.sleep(0.05)
    paid_before = server.stats()["requests"]
    # Lost: what arrived since the last commit (about a second's worth: 4 at a time, 100 ms each) and what was in
    # flight.
    assert paid_before - committed <= 4 / 0.1 * 1.5 + 4

    second = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    usage = json.loads(second.stdout.strip().splitlines()[-1])
    assert usage["cache_hits"] == committed and usage["calls"] == n - committed
    assert server.stats()["requests"] - paid_before == n - committed
    assert store.read("resume_output")["item_id"].n_unique() == n

"""LLMClient's contract with a scripted backend: order, structured-output validation, retries with new seeds,
rejections that keep the raw text, the response cache, and usage accounting."""

import json

import pytest

from persona_hub_dagster.lib.llm import LLMClient, LLMRequest, ResponseCache, SamplingParams, cache_namespace
from persona_hub_dagster.lib.llm.structured import parse_structured
from persona_hub_dagster.lib.llm.types import BackendFailure, Completion
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend

SCHEMA = {
    "type": "object",
    "properties": {"persona": {"type": "string", "minLength": 3}, "relation": {"enum": ["read", "write"]}},
    "required": ["persona", "relation"],
    "additionalProperties": False,
}


def request(i: int, **kwargs) -> LLMRequest:
    return LLMRequest.chat(f"text {i}", system="extract", json_schema=SCHEMA, request_id=f"r{i}", **kwargs)


def good(persona: str = "a chef") -> Completion:
    return Completion(json.dumps({"persona": persona, "relation": "read"}), "stop", 10, 5, 0.01)


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        ('{"persona": "a chef", "relation": "read"}', "stop", None),
        ('```json\n{"persona": "a chef", "relation": "read"}\n```', "stop", None),
        ('Sure! {"persona": "a chef", "relation": "read"} Hope this helps.', "stop", None),
        ("", "stop", "empty"),
        ('{"persona": "a chef", "relat', "length", "truncated"),
        ('{"persona": "a chef" "relation": "read"}', "stop", "invalid_json"),
        ('{"persona": "a chef", "relation": "like"}', "stop", "schema_mismatch: relation"),
        ('{"persona": "x", "relation": "read"}', "stop", "schema_mismatch: persona"),
        ('{"persona": "a chef", "relation": "read", "extra": 1}', "stop", "schema_mismatch: (root)"),
        ('["a chef"]', "stop", "schema_mismatch"),
    ],
)
def test_structured_outputs_are_parsed_and_validated(text, finish, reason):
    parsed, error = parse_structured(text, SCHEMA, finish)
    if reason is None:
        assert error is None and parsed == {"persona": "a chef", "relation": "read"}
    else:
        assert parsed is None and error.startswith(reason)


# ------------------------------------------------------------------------------------------------ client


def test_responses_come_back_in_order_with_ids_in_one_batched_call():
    backend = ScriptedBackend(lambda r: good(f"reader of {r.messages[-1]['content']}"))
    responses = LLMClient(backend).generate([request(i) for i in range(5)])
    assert [r.request_id for r in responses] == [f"r{i}" for i in range(5)]
    assert [r.parsed["persona"] for r in responses] == [f"reader of text {i}" for i in range(5)]
    assert backend.batches == [5]
    assert all(r.ok and r.attempts == 1 and r.backend == "scripted" for r in responses)


def test_invalid_outputs_are_retried_with_new_seeds_then_rejected_with_raw_text():
    def answer(r: LLMRequest) -> Completion:
        i = int(r.messages[-1]["content"].split()[1])
        if i == 0:
            return good()
        if i == 1:  # valid on the second attempt
            return good() if r.sampling.seed != 7 else Completion("not json", "stop")
        return Completion('{"persona": "a chef", "relation": "hate"}', "stop")  # never valid

    backend = ScriptedBackend(answer)
    client = LLMClient(backend, max_attempts=3)
    responses = client.generate([request(i, sampling=SamplingParams(seed=7)) for i in range(3)])

    assert [r.ok for r in responses] == [True, True, False]
    assert [r.attempts for r in responses] == [1, 2, 3]
    rejected = responses[2]
    assert rejected.error.startswith("schema_mismatch: relation") and '"hate"' in rejected.text
    seeds = [c.sampling.seed for c in backend.calls]
    assert seeds == [7, 7, 7, 1007, 1007, 2007]  # a retry never repeats the seed that failed
    assert backend.batches == [3, 2, 1]  # retries are batched too
    usage = client.usage
    assert (usage.requests, usage.calls, usage.retries, usage.rejections) == (3, 6, 3, 1)
    assert usage.rejection_reasons == {"schema_mismatch": 1}


def test_backend_failures_stop_the_batch_after_caching_what_succeeded(local_store):
    """A transport error is the backend's fault, not an output: asked again, then raised (never a reject row)."""
    backend = ScriptedBackend(
        lambda r: Completion(None, error="http_503: overloaded") if r.request_id == "r1" else good()
    )
    cache = ResponseCache(local_store, "faults.s")
    with pytest.raises(BackendFailure, match=r"1 of 2 requests .* failed at the backend .*http_503"):
        LLMClient(backend, cache=cache, max_attempts=2).generate([request(0), request(1)])
    assert len(backend.calls) == 3  # r1 was asked twice
    assert len(ResponseCache(local_store, "faults.s")) == 1  # r0's answer is kept for the re-run


def test_a_prompt_that_does_not_fit_is_not_retried():
    backend = ScriptedBackend(lambda r: Completion(None, error="context_overflow: 5000 tokens > n_ctx 4096"))
    responses = LLMClient(backend, max_attempts=3).generate([request(0)])
    assert responses[0].attempts == 1 and responses[0].error.startswith("context_overflow")


def test_plain_text_requests_need_only_non_empty_text():
    backend = ScriptedBackend(lambda r: Completion("  " if r.request_id == "b" else "hello", "stop"))
    a, b = LLMClient(backend, max_attempts=1).generate(
        [LLMRequest.chat("x", request_id="a"), LLMRequest.chat("y", request_id="b")]
    )
    assert a.ok and a.parsed is None and a.text == "hello"
    assert b.error == "empty"


# ------------------------------------------------------------------------------------------------ cache


def test_cache_replays_completions_and_revalidates_them(local_store):
    namespace = cache_namespace("text_personas", "sample")
    answers = iter([good("first"), Completion("broken", "stop"), good("third")])
    backend = ScriptedBackend(lambda r: next(answers))
    client = LLMClient(backend, cache=ResponseCache(local_store, namespace), max_attempts=1)
    first = client.generate([request(0), request(1), request(2)])
    assert [r.ok for r in first] == [True, False, True] and backend.batches == [3]

    # A new client (a re-run) on the same namespace: nothing is asked again, the rejection is re-derived.
    rerun_backend = ScriptedBackend(lambda r: pytest.fail("should have been served from the cache"))
    rerun = LLMClient(rerun_backend, cache=ResponseCache(local_store, namespace), max_attempts=1)
    again = rerun.generate([request(2), request(0), request(1)])
    assert [r.request_id for r in again] == ["r2", "r0", "r1"]
    assert all(r.cache_hit for r in again) and again[2].error.startswith("invalid_json")
    assert rerun.usage.cache_hits == 3 and rerun.usage.calls == 0 and rerun.usage.prompt_tokens == 0


def test_cache_keys_change_with_everything_that_changes_the_output(local_store):
    base = request(0)
    keys = {
        base.cache_key("m1"),
        base.cache_key("m2"),
        request(0, sampling=SamplingParams(temperature=0.1)).cache_key("m1"),
        request(0, sampling=SamplingParams(seed=1)).cache_key("m1"),
        LLMRequest.chat("text 0", system="extract", json_schema={**SCHEMA, "required": ["persona"]}).cache_key("m1"),
        LLMRequest.chat("text 0", system="extract differently", json_schema=SCHEMA).cache_key("m1"),
    }
    assert len(keys) == 6
    assert base.cache_key("m1") == request(0).cache_key("m1")  # and nothing else (not the request id)


def test_namespaces_are_separate_and_transport_errors_are_not_cached(local_store):
    backend = ScriptedBackend(lambda r: Completion(None, error="timeout: 120 s"))
    with pytest.raises(BackendFailure):
        LLMClient(backend, cache=ResponseCache(local_store, "stage.a"), max_attempts=1).generate([request(0)])
    assert len(ResponseCache(local_store, "stage.a")) == 0

    LLMClient(ScriptedBackend(lambda r: good()), cache=ResponseCache(local_store, "stage.a")).generate([request(0)])
    assert len(ResponseCache(local_store, "stage.a")) == 1
    assert len(ResponseCache(local_store, "stage.b")) == 0
    with pytest.raises(ValueError):
        ResponseCache(local_store, "bad/namespace")
    assert cache_namespace("synthetic/math", "shard 1") == "synthetic-math.shard-1"


def test_cache_works_on_s3(s3_bucket):
    from persona_hub_dagster.lib.storage import DeltaStore

    store = DeltaStore(root=f"s3://{s3_bucket}/root")
    LLMClient(ScriptedBackend(lambda r: good()), cache=ResponseCache(store, "s.x")).generate([request(0), request(1)])
    replay = LLMClient(ScriptedBackend(lambda r: pytest.fail("not cached")), cache=ResponseCache(store, "s.x"))
    assert all(r.cache_hit for r in replay.generate([request(1), request(0)]))


def test_concurrent_runs_append_to_one_namespace_without_losing_entries(storage_root):
    import subprocess
    import sys
    from pathlib import Path

    from persona_hub_dagster.lib.storage import DeltaStore

    writer = Path(__file__).parent / "helpers" / "cache_writer.py"
    processes = [
        subprocess.Popen(
            [sys.executable, str(writer), storage_root, "stage.shared", prefix, "15"], stderr=subprocess.PIPE, text=True
        )
        for prefix in ("a", "b", "c")
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    cache = ResponseCache(DeltaStore(root=storage_root), "stage.shared")
    assert len(cache) == 45
    assert cache.lookup(["b-14"])["b-14"].text == "answer b 14"


def test_progress_reports_done_of_planned_cache_hits_tokens_and_an_eta():
    from persona_hub_dagster.lib.llm.progress import Progress, subscribe

    now = [0.0]
    lines, seen = [], []
    progress = Progress("text_personas s1", report=lines.append, every_s=10, notify_s=0, clock=lambda: now[0])
    progress.plan(100)
    with subscribe(seen.append):
        for step in range(40):
            now[0] += 0.5
            progress.answered(1, cache_hits=10 if step >= 10 else step, completion_tokens=20 * (step + 1), fresh=step)
    assert len(lines) == 2  # at 10 s and 20 s
    assert lines[-1].startswith("text_personas s1 so far: 40 of 100 requests planned so far (40%), 10 from the cache")
    assert "tokens/s" in lines[-1] and "ETA 3" in lines[-1]  # 60 left at 39 calls per 20 s: ~31 s
    assert [s.done for s in seen] == list(range(1, 41)) and seen[-1].planned == 100
    final = progress.finish()
    assert final.finished and lines[-1].startswith("text_personas s1 done: 40 of 100 requests")


def test_no_eta_until_a_few_answers_came_from_the_backend_and_the_rate_counts_only_those():
    from persona_hub_dagster.lib.llm.progress import ETA_AFTER, Progress

    now = [0.0]
    progress = Progress("stage", clock=lambda: now[0])
    progress.plan(3620)
    now[0] += 0.0001  # the first answer at once: a rate of ~10,000/s would promise the stage in a second
    progress.answered(1, cache_hits=0, completion_tokens=60, fresh=1)
    first = progress.snapshot()
    assert first.eta_s is None and "ETA" not in first.line()
    now[0] = 10.0
    progress.answered(ETA_AFTER - 1, cache_hits=0, completion_tokens=60 * ETA_AFTER, fresh=ETA_AFTER)
    steady = progress.snapshot()
    assert steady.answers_per_s == ETA_AFTER / 10.0 and "0.50 answers/s" in steady.line()
    assert steady.eta_s == (3620 - ETA_AFTER) / steady.answers_per_s and "ETA 2h00m" in steady.line()
    progress.answered(100, cache_hits=100, completion_tokens=60 * ETA_AFTER, fresh=ETA_AFTER)  # cached: free
    assert progress.snapshot().answers_per_s == steady.answers_per_s


def test_a_client_reports_progress_per_final_response_in_both_paths():
    from persona_hub_dagster.lib.llm.progress import Progress

    valid = json.dumps({"persona": "a reader", "relation": "read"})
    backend = ScriptedBackend(lambda r: Completion(text=valid, finish_reason="stop"))
    client = LLMClient(backend)
    client.progress = Progress("stage", every_s=0, report=(lines := []).append)
    requests = [LLMRequest.chat(f"q{i}", json_schema=SCHEMA) for i in range(7)]
    assert sum(len(b) for b in client.generate_batches(requests, 3)) == 7
    assert client.progress.done == 7 and client.progress.planned == 7
    assert lines[-1].startswith("stage so far: 7 of 7 requests planned so far (100%)")


def test_a_token_budget_stops_generation_at_a_batch_boundary_and_keeps_the_answers(store):
    from persona_hub_dagster.lib.llm.client import TokenBudget

    valid = json.dumps({"persona": "a reader", "relation": "read"})
    answer = Completion(text=valid, finish_reason="stop", prompt_tokens=10, completion_tokens=5)
    backend = ScriptedBackend(lambda r: answer)
    cache = ResponseCache(store, "budget")
    client = LLMClient(backend, cache=cache)
    client.budget = TokenBudget(40)  # 15 tokens a call: the second batch of two crosses it
    requests = [LLMRequest.chat(f"q{i}", json_schema=SCHEMA) for i in range(8)]
    batches = list(client.generate_batches(requests, 2))
    assert [len(b) for b in batches] == [2, 2] and client.stopped_by_budget
    assert client.budget.spent == 60 and len(backend.calls) == 4 and len(cache) == 4
    assert list(client.generate_batches(requests, 2)) == []  # spent: nothing more this run

    fresh = LLMClient(backend, cache=ResponseCache(store, "budget"))  # the next run, without a budget
    assert sum(len(b) for b in fresh.generate_batches(requests, 2)) == 8
    assert fresh.usage.cache_hits == 4 and fresh.usage.calls == 4

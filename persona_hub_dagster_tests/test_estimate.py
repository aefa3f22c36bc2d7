"""Knowing the cost before paying it: each stage's declared estimator, the walk through a job, the past answers that
calibrate it, and the `estimate` command."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from persona_hub_dagster.lib import estimate, tables
from persona_hub_dagster.lib.evaluation import math_eval
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS
from persona_hub_dagster.lib.llm.cache import CACHE_SCHEMA
from persona_hub_dagster.lib.personas import persona_to_persona, text_to_persona
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis import generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
TEXTS = pl.DataFrame(
    {
        "text_id": [f"t{i}" for i in range(10)],
        "text": ["word " * 50] * 5 + ["一位对自动驾驶颇有见解的经济学者" * 3] * 5,
    }
)


def shard(store=None, **rows) -> estimate.Estimating:
    return estimate.Estimating(
        texts=TEXTS, count=estimate.approximate_tokens, model="m", store=store, rows=dict(rows), past={}
    )


def test_text_to_persona_is_one_call_per_text_and_relation_with_the_text_counted():
    settings = text_to_persona.TextToPersonaSettings(relations_per_text=2, max_text_chars=40)
    result = text_to_persona.estimate(settings, shard())
    assert result.calls == 20 and result.rows == {"text_personas": 20}
    overhead = shard().template_tokens(text_to_persona.TEMPLATE)
    # 40 characters of each text: 10 tokens of English, 40 of Chinese (a character each).
    assert result.prompt_tokens == 2 * (10 * overhead + 5 * 10 + 5 * 40)
    assert result.completion_tokens == 20 * text_to_persona.TYPICAL_PERSONA_TOKENS
    sampled = text_to_persona.estimate(replace(settings, max_texts=3), shard())
    assert sampled.calls == 6  # the same deterministic sample the stage takes


def test_persona_to_persona_follows_the_hops_until_the_budget():
    settings = persona_to_persona.ExpansionSettings(hops=3, fan_out=2, max_calls=10)
    result = persona_to_persona.estimate(settings, shard(text_personas=3))
    assert result.calls == 3 + 6 + 1  # the third hop is cut at the budget
    assert result.rows == {"expanded_personas": 20}
    unbounded = persona_to_persona.estimate(replace(settings, max_calls=1000), shard(text_personas=3))
    assert unbounded.calls == 3 + 6 + 12


def test_synthesis_samples_personas_from_the_hub_and_runs_every_step_and_turn():
    conversations = TASKS["conversations"]
    settings = conversations.settings(personas=5, turns=3)
    result = generate.stage(conversations).estimate(settings, shard(text_personas=2, expanded_personas=1))
    assert result.calls == 3 * 2 * 3  # 3 hub personas (fewer than 5), 2 steps (user, assistant), 3 turns
    tools = generate.stage(TASKS["tools"]).estimate(TASKS["tools"].settings(personas=4), shard(persona_hub=10))
    assert tools.calls == 4 * 2 and tools.rows == {"synthetic/tools": 4}


def test_evaluations_price_their_solutions_and_judgments(monkeypatch):
    settings = math_eval.MathEvalSettings(reasoning_solutions=2, program_solutions=1)
    running, skipped = shard(**{"synthetic/math": 10}), shard(**{"synthetic/math": 10})
    monkeypatch.setattr(running, "programs_run", lambda: True)
    monkeypatch.setattr(skipped, "programs_run", lambda: False)
    assert math_eval.stage(TASKS["math"]).estimate(settings, running).calls == 30
    assert (
        math_eval.stage(TASKS["math"]).estimate(settings, skipped).calls == 20
    )  # no program is asked for where none can run
    judged = EVALUATIONS["instructions"].estimate(
        EVALUATIONS["instructions"].settings(), shard(**{"synthetic/instructions": 7})
    )
    assert judged.calls == 7
    assert EVALUATIONS["tools"].estimate is None  # runs no model


def test_earlier_answers_of_the_same_model_replace_the_typical_lengths(tmp_path):
    store = DeltaStore(root=str(tmp_path))
    rows = {
        "key": ["a", "b", "c"],
        "namespace": ["expanded_personas.s1", "expanded_personas.s2", "expanded_personas.s3"],
        "backend": ["llama_cpp"] * 3,
        "model": ["m", "m", "other"],
        "text": ["{}"] * 3,
        "finish_reason": ["stop"] * 3,
        "prompt_tokens": [100, 200, 9999],
        "completion_tokens": [10, 30, 9999],
        "latency_s": [1.0] * 3,
        "created_at": [None] * 3,
        "run_id": ["r"] * 3,
    }
    store.append(tables.LLM_RESPONSES, pa.table(rows, schema=CACHE_SCHEMA), partition_by=["namespace"])
    assert estimate.past_tokens(store, "m") == {"expanded_personas": (150.0, 20.0)}
    calibrated = estimate.Estimating(
        texts=TEXTS, count=estimate.approximate_tokens, model="m", store=store, rows={"text_personas": 2}
    )
    result = persona_to_persona.estimate(persona_to_persona.ExpansionSettings(hops=1), calibrated)
    assert (result.calls, result.prompt_tokens, result.completion_tokens) == (2, 300, 40)


def test_the_walk_carries_rows_and_the_table_totals_time_and_money():
    stages = [
        (text_to_persona.STAGE, text_to_persona.TextToPersonaSettings(relations_per_text=1)),
        (persona_to_persona.STAGE, persona_to_persona.ExpansionSettings(hops=1, fan_out=2)),
    ]
    results = estimate.estimate_stages(stages, shard())
    assert [r.calls for r in results] == [10, 10]
    speed = estimate.Speed(prefill_tokens_s=100.0, decode_tokens_s=10.0)
    timed = estimate.timed(results, speed)
    assert timed[0].seconds == pytest.approx(results[0].prompt_tokens / 100 + results[0].completion_tokens / 10)
    served = estimate.Speed(0, 0, parallel=4, latency_s=2.0)
    assert served.seconds(results[0]) == 3 * 2.0  # 10 calls, 4 at a time
    printed = estimate.table(timed, price_per_million=2.0)
    total = estimate.total(timed)
    assert printed.splitlines()[-1].split()[:2] == ["total", "20"] and f"${total.tokens * 2 / 1e6:,.2f}" in printed


@pytest.mark.llm
def test_the_estimate_command_prints_every_stage_before_anything_runs(tmp_path):
    corpus = tmp_path / "news.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"Story {i}: the council met about the harbour. " * 4}) + "\n" for i in range(30))
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PERSONA_HUB_STORAGE": str(tmp_path / "delta")}

    def persona_hub(*args):
        return subprocess.run(
            [sys.executable, "-m", "persona_hub_dagster.cli", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )

    assert persona_hub("register-shard", str(corpus)).returncode == 0
    result = persona_hub("estimate", "news", "--sample", "5", "--set", "synthesize_math.personas=3", "--price", "0.5")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("  ")}
    assert lines["text_personas"][1] == "20"  # 5 texts x 4 relations
    assert lines["synthetic/math"][1] == "3" and lines["eval/math"][1] in ("6", "9")
    assert "backend speed: embedded model" in result.stdout and "$" in lines["total"][-1]
    assert not DeltaStore(root=env["PERSONA_HUB_STORAGE"]).exists(tables.RAW_TEXT)  # nothing was written

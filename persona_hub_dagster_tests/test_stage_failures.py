"""A failing model server or an empty upstream never replaces a shard's good rows: Text-to-Persona as Dagster runs
it, against a real HTTP server that answers, then fails (500, 400) or goes away mid-run."""

import socket
import threading

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.llm.cache import ResponseCache, cache_namespace
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.helpers.fault_server import FaultServer, run_text_to_persona

SHARD = "s"
TEXTS = [f"Text number {i}: a report about harbour pilots guiding ships through fog at night." for i in range(6)]
RAW_TEXT = dg.AssetSpec("raw_text", partitions_def=text_shards)


class GoesAway(FaultServer):
    """Answers `answers` requests, then goes away: requests already in flight get their connection dropped without
    an answer, and the server stops listening, so every later request finds nobody there."""

    def __init__(self, answers: int):
        super().__init__()
        self.answers = answers

    def respond(self, handler, behaviour, body):
        with self.lock:
            position = len(self.requests)
        if position > self.answers:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        super().respond(handler, behaviour, body)
        if position == self.answers:
            threading.Thread(target=self.close, daemon=True).start()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    store = DeltaStore(root=str(tmp_path / "delta"))
    raw = pl.DataFrame({"text_id": [f"t{i}" for i in range(len(TEXTS))], "text": TEXTS, "shard": SHARD})
    store.write_partitions(tables.RAW_TEXT, raw, partitions=[SHARD])
    monkeypatch.delenv("PERSONA_HUB_LLM_API_KEY", raising=False)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(text_shards.name, [SHARD])
        yield store, instance


run = run_text_to_persona


def failure_message(result) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failures[0].event_specific_data.error.to_string()


@pytest.mark.parametrize("status", [500, 400])
def test_a_server_that_fails_every_call_leaves_the_shards_rows_alone(setup, status):
    store, instance = setup
    good = FaultServer()
    assert run(store, instance, good).success
    before = store.delta_table(tables.TEXT_PERSONAS).version()
    assert store.row_count(tables.TEXT_PERSONAS, [SHARD]) == len(TEXTS)

    failing = FaultServer(*[("status", status)] * 100)
    # A re-run after a prompt change (here: another relation) must call the server again, and finds it failing.
    result = run(store, instance, failing, relation="like")
    assert not result.success
    assert f"http_{status}" in failure_message(result) and "failed at the backend" in failure_message(result)
    assert store.delta_table(tables.TEXT_PERSONAS).version() == before  # nothing replaced
    assert store.row_count(tables.TEXT_PERSONAS, [SHARD]) == len(TEXTS)
    assert store.row_count(tables.TEXT_TO_PERSONA.rejects, [SHARD]) == 0  # no connection errors as "rejects"
    good.close()
    failing.close()


def test_a_server_that_goes_away_mid_run_fails_the_step_and_the_rerun_pays_only_the_rest(setup):
    store, instance = setup
    dying = GoesAway(answers=2)  # two requests are answered, then the server is gone
    result = run(store, instance, dying)
    assert not result.success and "connection" in failure_message(result)
    assert not store.exists(tables.TEXT_PERSONAS)  # nothing written
    cached = ResponseCache(store, cache_namespace(tables.TEXT_TO_PERSONA.name, SHARD))
    assert len(cached) == 2  # the answers that arrived before the failure, committed

    back = FaultServer()
    again = run(store, instance, back)
    assert again.success
    usage = again.get_asset_materialization_events()[0].materialization.metadata
    assert usage["llm/cache_hits"].value >= 2 and len(back.requests) == usage["llm/calls"].value
    assert store.row_count(tables.TEXT_PERSONAS, [SHARD]) == len(TEXTS)
    back.close()


def test_an_empty_upstream_does_not_empty_a_populated_partition(setup):
    store, instance = setup
    server = FaultServer()
    assert run(store, instance, server).success
    store.write_partitions(
        tables.RAW_TEXT,
        pl.DataFrame(schema={"text_id": pl.String, "text": pl.String, "shard": pl.String}),
        partitions=[SHARD],
    )
    result = run(store, instance, server)
    assert not result.success
    message = failure_message(result)
    assert "raw_text has no rows for shard 's'" in message and "would replace its 6 rows" in message
    assert store.row_count(tables.TEXT_PERSONAS, [SHARD]) == len(TEXTS)
    server.close()


def test_a_token_budget_stops_the_stage_writes_what_it_has_and_says_how_to_go_on(setup):
    """Each call costs 10 tokens (7 prompt + 3 completion); a budget of 25 stops the stage at a batch boundary."""
    store, instance = setup
    server = FaultServer()
    result = run(store, instance, server, token_budget=25)
    assert not result.success
    message = failure_message(result)
    assert "stopped at the run's token budget" in message and "of 25 tokens" in message
    assert "PERSONA_HUB_LLM_TOKEN_BUDGET" in message and "replay from the cache" in message
    written = store.row_count(tables.TEXT_PERSONAS, [SHARD])
    assert 0 < written < len(TEXTS)  # what it had, committed
    cached = store.row_count(tables.LLM_RESPONSES)
    assert cached >= written
    paid = len(server.requests)

    again = run(store, instance, server)  # no budget: finishes, paying only for what was not answered
    assert again.success and store.row_count(tables.TEXT_PERSONAS, [SHARD]) == len(TEXTS)
    assert len(server.requests) - paid == len(TEXTS) - cached


def test_an_empty_table_explains_itself_with_its_top_reject_reasons_and_what_would_help():
    from persona_hub_dagster.lib.stage import empty_table_explanation

    reasons = ["too_short: 80 words (at least 150)"] * 5 + ["truncated: cut at max_tokens"] * 2 + ["invalid_json: x"]
    why = empty_table_explanation(reasons, top=2)
    assert why.startswith("every output was rejected: too_short ×5 (try few_shot or persona_few_shot prompting")
    assert "truncated ×2 (try raise the stage's max_tokens" in why and why.endswith("and 1 other reason")
    assert "nothing was asked" in empty_table_explanation([])

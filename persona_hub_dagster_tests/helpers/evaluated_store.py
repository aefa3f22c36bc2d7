"""Two shards of every synthesis task's items and of every evaluation, as the stages write them, with scripted
model answers (so the numbers are known): the store behind the `evaluated` fixture (conftest.py) that
test_eval_report and test_release read."""

import json

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.evaluation.registry import EVALUATIONS
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.stage import StageCall, frame
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis import generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend
from persona_hub_dagster_tests.helpers.synthetic_answers import PERSONAS, good_answer

SHARDS = ("north", "south")


def evaluation_answer(request) -> str:
    """Solvers answer 126 (the scripted math problem's answer), reasoning solvers the intended order, judges 4s."""
    wanted = request.json_schema["properties"]
    if "program" in wanted:
        return json.dumps({"program": "print(24 * 0.75 * 7)"})
    if "reasoning" in wanted:
        answer = "126" if "crate" in request.messages[-1]["content"] else "A, C, B."
        return json.dumps({"reasoning": "Step by step.", "answer": answer})
    scores = {name: 4 for name in wanted if name != "rationale"}
    return json.dumps({**scores, "rationale": "Specific and in character."})


def evaluated_store(root: str, embedder) -> DeltaStore:
    """Two shards: hub personas, every task's items and every evaluation, as the stages write them."""
    store = DeltaStore(root=root)
    for number, shard in enumerate(SHARDS):
        hub = pl.DataFrame(
            {
                "persona_id": [f"{shard}-p{i}" for i in range(4)],
                "persona": [f"{p} ({shard})" for p in PERSONAS],
                "text_id": [f"{shard}-text{i}" for i in range(4)],  # as the hub has them: the source text's id
                "source": "text_personas",
            }
        ).with_columns(shard=pl.lit(shard))
        store.write_partitions(tables.PERSONA_HUB, hub, partitions=[shard])
        for task in TASKS.values():
            generator = LLMClient(ScriptedBackend(lambda r: Completion(good_answer(r), "stop")))
            output = generate.synthesize(
                task, hub, generator, task.settings(personas=2 + number), shard=shard, run_id="gen"
            )
            store.write_partitions(task.table, frame(output.rows, generate.output_schema(task)), partitions=[shard])
            stage = EVALUATIONS[task.name]
            judge = LLMClient(ScriptedBackend(lambda r: Completion(evaluation_answer(r), "stop")))
            call = StageCall(judge, store, shard, "eval", embedder=embedder)
            result = stage.run({task.table: store.scan(task.table, [shard])}, call, stage.settings())
            for table, rows in result.tables.items():
                store.write_partitions(table, rows, partitions=[shard])
    return store

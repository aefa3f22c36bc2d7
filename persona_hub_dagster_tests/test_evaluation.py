"""Evaluation of every task, in lib/: contamination (n-gram and embedding), the tools sandbox checks, the LLM judge
(parsing, thresholds, rejects), reasoning agreement, and diversity and grounding on data with known answers. The
embedded model judges for real in test_pipeline.py."""

import json

import numpy as np
import polars as pl
import pytest

from persona_hub_dagster.lib.evaluation import contamination, diversity, judge, reasoning_eval, tools_eval
from persona_hub_dagster.lib.evaluation.answers import same_answer
from persona_hub_dagster.lib.evaluation.properties import set_properties
from persona_hub_dagster.lib.evaluation.sandbox import ProgramExecution
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.stage import StageCall
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend

# A small benchmark written for this test: grade-school problems in the style of a public test split.
BENCHMARK = contamination.Benchmark(
    "mini-bench",
    [
        "A baker made 48 muffins in the morning and sold three quarters of them before noon. In the afternoon she "
        "baked 24 more and sold half of all the muffins she had left. How many muffins were left at closing time?",
        "Tom reads 12 pages of his novel every weekday and 30 pages on each day of the weekend. The novel has 402 "
        "pages. How many full weeks does he need to finish it, and how many pages are left for the last week?",
        "A train leaves the station at 9:15 and travels 210 kilometres at an average speed of 84 kilometres per "
        "hour. It then waits 20 minutes and returns at 70 kilometres per hour. At what time does it arrive back?",
        "Maria buys 3 notebooks at 2.40 dollars each and 5 pens at 0.85 dollars each. She pays with a 20 dollar "
        "bill. How much change does she receive?",
    ],
)
VERBATIM = BENCHMARK.texts[1]
PARAPHRASED = (
    "Tom reads 12 pages of his book every weekday and 30 pages on each day of the weekend. The book has 402 "
    "pages. How many whole weeks does he need to finish it, and how many pages remain for the final week?"
)
SAME_TOPIC = (
    "A harbour pilot logs 14 ship transits a week. Each takes 2.5 hours, and every fourth one is at night with a "
    "30-minute briefing. How many hours does he spend on transits and briefings in four weeks?"
)


@pytest.fixture(scope="module")
def embedder():
    from persona_hub_dagster.lib.embeddings import Embedder

    return Embedder()


def test_ngram_overlap_flags_a_verbatim_copy_with_its_record_and_the_shared_words():
    flags = contamination.ngram_overlaps([SAME_TOPIC, "Word " + VERBATIM + " Thanks!"], BENCHMARK)
    assert flags["item_index"].to_list() == [1]
    row = flags.row(0, named=True)
    assert row["benchmark"] == "mini-bench" and row["benchmark_index"] == 1 and row["method"] == "ngram13"
    assert row["score"] > 0.8 and "tom reads 12 pages" in " ".join(contamination.words([row["evidence"]])[0])


def test_a_light_paraphrase_is_caught_by_the_embedding_neighbour_and_an_unrelated_item_is_not(embedder):
    flags = contamination.contamination(
        [VERBATIM, PARAPHRASED, SAME_TOPIC, BENCHMARK.texts[3].replace("dollars", "euros")],
        [BENCHMARK],
        encode=embedder.encode,
    )
    flagged = {(r["item_index"], r["method"]): r["benchmark_index"] for r in flags.iter_rows(named=True)}
    assert flagged[(0, "ngram13")] == 1 and flagged[(0, "embedding")] == 1
    assert flagged[(1, "embedding")] == 1  # too many words changed for a shared 13-gram to survive everywhere
    assert flagged[(3, "embedding")] == 3
    assert not any(item == 2 for item, _ in flagged), "a problem on the same topic is not contamination"


@pytest.mark.slow
def test_contamination_scales_without_an_all_pairs_loop():
    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(5000)]
    bench = contamination.Benchmark("big", [" ".join(rng.choice(vocabulary, 40)) for _ in range(5000)])
    items = [" ".join(rng.choice(vocabulary, 40)) for _ in range(20_000)] + [bench.texts[4321]]
    flags = contamination.ngram_overlaps(items, bench)
    assert flags["item_index"].to_list() == [20_000] and flags["benchmark_index"].to_list() == [4321]


def test_benchmark_files_are_read_by_format_and_field(tmp_path):
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"question": t}) + "\n" for t in BENCHMARK.texts))
    pl.DataFrame({"problem": BENCHMARK.texts}).write_parquet(tmp_path / "b.parquet")
    pl.DataFrame({"text": BENCHMARK.texts}).write_csv(tmp_path / "b.csv")
    assert contamination.benchmark_from_spec(f"g=/{tmp_path}/b.jsonl#question").texts == BENCHMARK.texts
    assert contamination.benchmark_from_spec(f"m={tmp_path}/b.parquet#problem").texts == BENCHMARK.texts
    assert contamination.benchmark_from_spec(f"c={tmp_path}/b.csv").name == "c"
    with pytest.raises(ValueError, match="no field 'body'"):
        contamination.benchmark_from_spec(f"x={tmp_path}/b.csv#body")
    with pytest.raises(ValueError, match="NAME=PATH"):
        contamination.benchmark_from_spec(str(tmp_path / "b.csv"))


def tool_row(code: str, parameters=None, example=None) -> dict:
    parameters = parameters or {
        "type": "object",
        "properties": {"total": {"type": "number"}, "people": {"type": "integer"}},
        "required": ["total", "people"],
    }
    return {
        "name": "split_bill",
        "parameters": json.dumps(parameters),
        "example_arguments": json.dumps(example or {"total": 100, "people": 4}),
        "code": code,
    }


LIMITS = tools_eval.ToolsEvalSettings(timeout_s=2).limits


def test_a_correct_tool_passes_every_check_and_returns_its_value():
    result = tools_eval.check_tool(tool_row("def split_bill(total, people):\n    return total / people\n"), LIMITS)
    assert all(result[c] for c in tools_eval.CHECK_ORDER) and result["failed_check"] is None
    assert json.loads(result["result"]) == 25.0


@pytest.mark.parametrize(
    ("code", "failed", "error"),
    [
        ("def split_bill(total, people):\n    raise ValueError('no bill')\n", "returns", "ValueError: no bill"),
        ("def split_bill(total, guests):\n    return 1\n", "static", "signature_mismatch"),
        ("def split_bill(total, people):\n    while True:\n        pass\n", "returns", "timeout"),
        ("def split_bill(total, people):\n    return {1, 2}\n", "json_serializable", "not JSON-serializable"),
        ("import os\ndef split_bill(total, people):\n    return 1\n", "static", "forbidden_import: os"),
        ("x = 1 / 0\ndef split_bill(total, people):\n    return 1\n", "imports", "ZeroDivisionError"),
        ("split_bill = 3\n", "static", "missing_function"),
    ],
)
def test_each_broken_tool_fails_the_right_check(code, failed, error):
    result = tools_eval.check_tool(tool_row(code), LIMITS)
    assert result["failed_check"] == failed and error in result["error"], result
    assert not result[failed]


def test_without_a_sandbox_a_tool_is_not_run_and_neither_passes_nor_fails():
    unavailable = ProgramExecution(None, "sandbox unavailable: bubblewrap is not installed")
    good = tools_eval.check_tool(
        tool_row("def split_bill(total, people):\n    return total / people\n"), LIMITS, unavailable
    )
    assert good["static"] and good["not_run"] == unavailable.not_run and good["sandbox"] is None
    assert all(good[c] is None for c in tools_eval.CHECK_ORDER[1:]) and good["failed_check"] is None
    # The static checks need no sandbox: code that fails them still fails.
    bad = tools_eval.check_tool(
        tool_row("import os\ndef split_bill(total, people):\n    return 1\n"), LIMITS, unavailable
    )
    assert bad["failed_check"] == "static" and bad["not_run"] is None


def test_a_signature_that_hides_behind_a_decorator_is_caught_at_run_time():
    code = (
        "import functools\n\ndef wrap(f):\n    @functools.wraps(f)\n    def inner(*args, **kwargs):\n"
        "        return f(*args, **kwargs)\n    del inner.__wrapped__\n    return inner\n\n"
        "@wrap\ndef split_bill(total, people):\n    return total / people\n"
    )
    result = tools_eval.check_tool(tool_row(code), LIMITS)
    assert result["static"] and result["has_function"] and result["failed_check"] == "signature_matches"


ITEMS = pl.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "persona_id": ["p1", "p2", "p3"],
        "instruction": ["Plan my week of night shifts.", "Explain tides to my apprentices.", "Help."],
        "persona": ["A nurse.", "A harbour pilot.", "A baker."],
    }
)


def judge_call(answer, store=None) -> StageCall:
    backend = ScriptedBackend(lambda r: Completion(answer(r), finish_reason="stop"))
    return StageCall(LLMClient(backend, max_attempts=1), store, "s", "run")


def test_the_judge_scores_each_criterion_passes_at_the_threshold_and_keeps_malformed_outputs():
    rubric = TASKS["instructions"].evaluations[0].rubric

    def answer(request):
        if "Help." in request.messages[-1]["content"]:
            return "I think this is fine"  # not JSON: a reject, never dropped
        low = 2 if "tides" in request.messages[-1]["content"] else 4
        return json.dumps({"specific": 5, "answerable": low, "in_voice": 4, "rationale": "Concrete  request."})

    checks, rejects = judge.judge_items(
        rubric, "instructions", ITEMS, judge_call(answer), judge.JudgeSettings(threshold=3)
    )
    rows = {r["item_id"]: r for r in checks.iter_rows(named=True)}
    assert rows["i1"]["passed"] and rows["i1"]["min_score"] == 4 and rows["i1"]["rationale"] == "Concrete request."
    assert not rows["i2"]["passed"] and rows["i2"]["judged"] and rows["i2"]["score_answerable"] == 2
    assert not rows["i3"]["passed"] and not rows["i3"]["judged"]
    assert len(rejects) == 1 and rejects[0]["raw_output"] == "I think this is fine"
    assert rejects[0]["stage"] == "eval/instructions" and rejects[0]["reason"].startswith("invalid_json")
    lenient, _ = judge.judge_items(rubric, "instructions", ITEMS, judge_call(answer), judge.JudgeSettings(threshold=2))
    assert lenient.filter(pl.col("item_id") == "i2")["passed"][0]


def test_scores_without_a_rationale_are_not_a_judgment():
    rubric = TASKS["instructions"].evaluations[0].rubric

    def answer(request):
        return json.dumps({"specific": 1, "answerable": 1, "in_voice": 1, "rationale": "..."})

    checks, rejects = judge.judge_items(
        rubric, "instructions", ITEMS.head(1), judge_call(answer), judge.JudgeSettings()
    )
    assert not checks["judged"][0] and rejects[0]["reason"].startswith("placeholder_echo")


def test_every_rubric_describes_its_criteria_and_asks_for_them():
    for rubric in [e.rubric for task in TASKS.values() for e in task.evaluations if e.rubric]:
        schema = rubric.schema()
        assert schema["required"] == [*rubric.criteria, "rationale"]
        assert all(schema["properties"][c]["enum"] == [1, 2, 3, 4, 5] for c in rubric.criteria)
    with pytest.raises(ValueError, match="does not describe"):
        judge.Rubric("judge_instructions", ("specific", "funny"), lambda row: {})


def test_reasoning_passes_when_enough_solutions_reach_the_intended_answer():
    items = pl.DataFrame(
        {
            "item_id": ["right", "wrong"],
            "question": ["Which ferry leaves first?", "Who broke the window?"],
            "answer": ["The green ferry leaves first.", "Cy broke the window."],
        }
    )
    said = {"right": ["the green ferry", "The green ferry", "red"], "wrong": ["Amy", "Bo did it", "Amy"]}

    def answer(request):
        item, index = request.request_id.split(":")
        return json.dumps({"reasoning": "...", "answer": said[item][int(index)]})

    settings = reasoning_eval.ReasoningEvalSettings(solutions=3, min_agreement=2)
    checks, solutions, rejects = reasoning_eval.evaluate(items, judge_call(answer), settings)
    rows = {r["item_id"]: r for r in checks.iter_rows(named=True)}
    assert rows["right"]["agreeing"] == 2 and rows["right"]["passed"]
    assert rows["wrong"]["agreeing"] == 0 and not rows["wrong"]["passed"]
    assert len(solutions) == 6 and not rejects
    assert same_answer("70 minutes.", "70") and not same_answer("492", "429")


def test_identical_items_are_all_near_duplicates_and_diverse_ones_are_not():
    same = ["A ferry crosses the strait in forty minutes when the tide is slack."] * 5
    dups = diversity.near_duplicates(same, None)
    assert dups.minhash_rate == 1.0 and dups.minhash_of.tolist() == [-1, 0, 0, 0, 0]
    assert diversity.distinct_n(same, 1) == round(12 / 65, 4)  # 13 words, 12 distinct ("the" twice), 5 times
    varied = ["Bake bread at dawn.", "Tune a violin slowly.", "Map the river delta.", "Repair a bicycle chain."]
    assert diversity.near_duplicates(varied, None).minhash_rate == 0.0
    assert diversity.distinct_n(varied, 2) == 1.0


def test_vectors_measure_pairwise_distance_and_grounding_lift():
    rng = np.random.default_rng(1)

    def unit(vectors):
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    # Like sentence embeddings, every vector shares a common direction: unrelated texts have cosine ~0.3, not 0.
    common = 0.12 * np.ones(32)
    personas = unit(rng.normal(size=(50, 32)) / np.sqrt(32) + common)
    copied = unit(personas + 0.02 * rng.normal(size=personas.shape))  # items that copy their persona
    ids = [f"p{i}" for i in range(50)]
    grounded = diversity.grounding(copied, personas, ids)
    assert grounded.lift > 2 and np.isfinite(grounded.other).all()
    unrelated = unit(rng.normal(size=personas.shape) / np.sqrt(32) + common)
    assert 0.8 < diversity.grounding(unrelated, personas, ids).lift < 1.25
    assert diversity.mean_pairwise_distance(np.repeat(personas[:1], 10, axis=0)) == pytest.approx(0, abs=1e-6)
    spread = unit(rng.normal(size=(200, 32)))
    assert 0.9 < diversity.mean_pairwise_distance(spread) < 1.1
    curve = diversity.similarity_curve(copied, personas, pairs=5000)
    assert curve["pairs"].sum() > 4000 and (curve["item_similarity"] <= curve["persona_similarity"] + 0.1).all()


def test_set_properties_flag_duplicates_and_say_not_checked_without_a_benchmark(embedder):
    texts = ["Tom reads 12 pages every weekday.", "Tom reads 12 pages every weekday.", SAME_TOPIC]
    properties = set_properties(
        ["a", "b", "c"], texts, ["p1", "p2", "p3"], ["A reader.", "A reader too.", "A pilot."], embedder=embedder
    )
    rows = {r["item_id"]: r for r in properties.per_item.iter_rows(named=True)}
    assert (
        rows["b"]["duplicate_of"] == "a"
        and rows["b"]["duplicate_by"] == "minhash"
        and rows["c"]["duplicate_of"] is None
    )
    assert rows["a"]["contaminated"] is None and properties.metrics["contamination"]["checked"].startswith(
        "not checked"
    )
    checked = set_properties(["x"], [VERBATIM], ["p"], ["A teacher."], embedder=embedder, benchmarks=[BENCHMARK])
    row = checked.per_item.row(0, named=True)
    assert row["contaminated"] and row["contamination_index"] == 1 and row["contamination_method"] == "ngram13"
    assert checked.metrics["contamination"] == {"checked": ["mini-bench"], "contaminated": 1}

"""The synthesis tasks' logic in lib/: every task's validator on good and bad answers, multi-turn conversations and
their resume, the three prompting modes, demonstration pools and the template check. A scripted backend decides the
model's answers here; the embedded model runs every task end to end in test_pipeline.py."""

import json

import polars as pl
import pytest

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.llm.cache import ResponseCache
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis import demonstrations, generate
from persona_hub_dagster.lib.synthesis.steps import Item, Step, SynthesisTask, TaskContext, TemplateInputError
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster.lib.synthesis.tasks.instructions import instruction
from persona_hub_dagster.lib.synthesis.tasks.npc import npc_schema
from persona_hub_dagster.lib.synthesis.world import WorldSheetError, load_world, parse_world
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend
from persona_hub_dagster_tests.helpers.synthetic_answers import GOOD_CODE, PERSONAS, SPEC, good_answer, npc_answer

HUB = pl.DataFrame({"persona_id": [f"p{i}" for i in range(len(PERSONAS))], "persona": PERSONAS})


def context(task: str, **settings) -> TaskContext:
    return TASKS[task].context(TASKS[task].settings(**settings))


def parse(task: str, answer, item: Item | None = None, step: int = 0, **settings):
    task_ = TASKS[task]
    return task_.steps[step].parse(answer, item or Item("p", "persona", 0), context(task, **settings))


def rejected(reason: str, task: str, answer, **kwargs) -> None:
    with pytest.raises(Rejected, match=f"^{reason}"):
        parse(task, answer, **kwargs)


# ---------------------------------------------------------------------------------------------------- validators


def test_math_problems_keep_their_focus_and_never_state_the_answer():
    good = {"problem": "A bakery sells 120 loaves a day at 3.50 euros; what is its revenue over a 6-day week?"}
    assert parse("math", good) == {"problem": good["problem"]}
    rejected("contains_solution", "math", {"problem": "A bakery sells 120 loaves at 3 euros.\nAnswer: 360 euros"})
    rejected("no_numbers", "math", {"problem": "Think about fairness and kindness in a long and thoughtful essay."})
    assert context("math", focus="geometry").inputs["focus"] == "a geometry problem"
    assert context("math", focus="probability with dice").inputs["focus"] == "a problem about probability with dice"
    assert context("math", focus="olympiad").row == {"focus": "olympiad"}


def test_reasoning_keeps_answer_and_justification_apart_and_rejects_a_question_that_states_its_answer():
    good = {
        "question": "Three ferries leave at 8, 9 and 10. The red one is not first, the blue one leaves after the "
        "red one. Which ferry leaves at 8?",
        "answer": "The green ferry.",
        "justification": "Red is not first and blue is after red, so green is first.",
    }
    assert parse("reasoning", good) == good
    states = {**good, "question": good["question"] + " (Hint: the answer is the green ferry.)"}
    rejected("states_answer", "reasoning", states)
    copy = {**good, "question": "Who guides ships through fog in the harbour at night?", "answer": ""}
    rejected("no_answer", "reasoning", copy)
    long_answer = {
        **good,
        "answer": "the blue ferry leaves last",
        "question": good["question"] + " Note that the blue ferry leaves last.",
    }
    rejected("states_answer", "reasoning", long_answer)
    rejected("no_justification", "reasoning", {**good, "justification": "..."})
    assert context("reasoning", variant="trick").row == {"variant": "trick"}
    with pytest.raises(ValueError, match="variant"):
        TASKS["reasoning"].settings(variant="riddle")


def test_knowledge_articles_need_150_words_and_no_meta_talk():
    body = " ".join(["Expansion joints let a bridge deck grow and shrink with the seasons."] * 14)  # 168 words
    assert parse("knowledge", {"title": "How do bridges cope with heat?", "body": body})["body"] == body
    rejected("too_short", "knowledge", {"title": "How do bridges cope?", "body": " ".join(body.split()[:149])})
    rejected("meta_talk", "knowledge", {"title": "Bridges", "body": "As an AI language model, " + body})
    rejected("no_title", "knowledge", {"title": "...", "body": body})


def test_npcs_must_live_in_the_world_sheet():
    world = load_world()
    assert world.name == "The Ember Reach" and "Brinehold" in world.locations and "The Tide Court" in world.factions
    fields = parse("npc", npc_answer())
    assert fields["location"] == "Brinehold" and fields["dialogue"] == [
        "Mind the third buoy.",
        "Fog's coming in; we wait.",
    ]
    rejected("unknown_location", "npc", npc_answer(location="Atlantis"))
    rejected("unknown_faction", "npc", npc_answer(faction="The Illuminati"))
    rejected("missing_fields", "npc", npc_answer(backstory=" "))
    rejected("missing_fields", "npc", npc_answer(dialogue=["..."]))
    # The backend's grammar enumerates the world's places; without a world any string passes the schema.
    assert npc_schema(world)["properties"]["location"]["enum"] == list(world.locations)
    assert "enum" not in npc_schema(None)["properties"]["location"]


def test_a_users_world_sheet_replaces_the_shipped_one(tmp_path):
    sheet = tmp_path / "station.md"
    sheet.write_text(
        "# Orbital Station Nine\n\nA mining station.\n\n## Locations\n- **Hydroponics Ring** — food\n"
        "- **Dock C** — ships\n\n## Factions\n- **Miners' Union** — workers\n"
    )
    settings = TASKS["npc"].settings(world_file=str(sheet))
    ctx = TASKS["npc"].context(settings)
    assert ctx.world.locations == ("Hydroponics Ring", "Dock C") and ctx.row == {"world": "Orbital Station Nine"}
    assert "Hydroponics Ring" in ctx.inputs["world"] and ctx.inputs["world"].startswith("<world>")
    assert TASKS["npc"].steps[0].parse(npc_answer(location="Dock C", faction="Miners' Union"), Item("p", "x", 0), ctx)
    with pytest.raises(WorldSheetError, match="no factions"):
        parse_world("# Empty\n## Locations\n- **A** — a\n")


def test_tool_specs_are_valid_json_schemas_with_identifier_names_and_fitting_examples():
    fields = parse("tools", SPEC)
    assert json.loads(fields["parameters"]) == SPEC["parameters"] and json.loads(fields["example_arguments"])
    assert json.loads(fields["spec"])["name"] == "split_bill"  # what the code step's prompt shows
    rejected("invalid_name", "tools", {**SPEC, "name": "Split Bill"})
    rejected("invalid_name", "tools", {**SPEC, "name": "lambda"})
    bad_schema = {**SPEC, "parameters": {"type": "object", "properties": {"total": {"type": "money"}}}}
    rejected("invalid_parameters: not a valid JSON Schema", "tools", bad_schema)
    rejected("invalid_parameters", "tools", {**SPEC, "parameters": {"type": "object", "properties": {"my-total": {}}}})
    rejected("invalid_example", "tools", {**SPEC, "example_arguments": {"total": "a hundred", "people": 4}})


def test_a_model_written_schema_cannot_hang_or_fail_the_tools_stage():
    # Found by the hostile-answer probe: a `$ref` that resolves nowhere raised out of the validator (failing the
    # stage), and a backtracking `pattern` with a matching example held the worker for minutes in `re`.
    def with_property(schema, example):
        parameters = {"type": "object", "properties": {"code": schema}, "required": ["code"]}
        return {**SPEC, "parameters": parameters, "example_arguments": {"code": example}}

    rejected(r"invalid_parameters: \$ref", "tools", with_property({"$ref": "http://example.com/s.json"}, "x"))
    rejected(r"invalid_parameters: \$ref", "tools", with_property({"$ref": "#/nope"}, "x"))
    rejected(r"invalid_parameters: \$ref", "tools", with_property({"$ref": "#"}, "x"))
    rejected(
        "invalid_parameters: patternProperties",
        "tools",
        with_property({"type": "object", "patternProperties": {"(a+)+$": {}}}, {"a" * 30 + "!": 1}),
    )
    # Backtracking that `re` would run for hours: answered quickly, or cut off by the time limit.
    rejected("invalid_example", "tools", with_property({"type": "string", "pattern": "(a+)+$"}, "a" * 40 + "!"))
    rejected(
        "invalid_example: .* the pattern",
        "tools",
        with_property({"type": "string", "pattern": "(a|aa)+$"}, "a" * 60 + "!"),
    )
    rejected(
        "invalid_parameters: not a valid JSON Schema", "tools", with_property({"type": "string", "pattern": "("}, "x")
    )
    rejected("invalid_example", "tools", with_property({"type": "string", "pattern": "^[A-Z]{3}$"}, "ab1"))
    assert parse("tools", with_property({"type": "string", "pattern": "^[A-Z]{3}$"}, "EUR"))["name"] == "split_bill"


def test_tool_code_must_define_exactly_the_declared_signature_and_import_only_allowed_modules():
    item = Item("p", "x", 0, fields=parse("tools", SPEC))
    assert parse("tools", {"code": GOOD_CODE}, item=item, step=1) == {"code": GOOD_CODE}
    fenced = "```python\n" + GOOD_CODE + "```"
    assert parse("tools", {"code": fenced}, item=item, step=1)["code"] == GOOD_CODE
    cases = {
        "signature_mismatch": "def split_bill(amount, people):\n    return amount / people\n",
        "signature_mismatch: split_bill takes": "def split_bill(*args):\n    return 0\n",
        "missing_function": "def share(total, people):\n    return total / people\n",
        "forbidden_import: os": "import os\n\ndef split_bill(total, people):\n    return os.getpid()\n",
        "forbidden_import: subprocess": "def split_bill(total, people):\n    from subprocess import run\n",
        "forbidden_import: __import__": "def split_bill(total, people):\n    return __import__('os')\n",
        "syntax_error": "def split_bill(total, people)\n    return 1\n",
    }
    for reason, code in cases.items():
        rejected(reason, "tools", {"code": code}, item=item, step=1)


def test_user_turns_must_not_repeat_and_build_the_chat_format():
    item = Item("p", "x", 0)
    item.fields.update(parse("conversations", {"message": "How do I fix soft spots in my deck?"}, item=item))
    item.fields.update(parse("conversations", "Cut out the rot and laminate new plywood.", item=item, step=1))
    assert item.fields["messages"] == [
        {"role": "user", "content": "How do I fix soft spots in my deck?"},
        {"role": "assistant", "content": "Cut out the rot and laminate new plywood."},
    ]
    assert "User: How do I fix" in item.fields["transcript"]
    rejected("repeated_turn", "conversations", {"message": "how do I fix soft spots in my deck?"}, item=item)


# ---------------------------------------------------------------------------------------------------- engine


def scripted(answer=good_answer) -> ScriptedBackend:
    return ScriptedBackend(lambda r: Completion(answer(r), finish_reason="stop"))


@pytest.fixture
def derived_store(tmp_path):
    """A storage root whose demonstrations table has every pool entry's persona (as the demonstrations stage
    writes it, here with scripted personas)."""
    store = DeltaStore(root=str(tmp_path / "delta"))
    backend = ScriptedBackend(
        lambda r: Completion(json.dumps({"persona": f"An author of demonstration {r.request_id[:8]}."}), "stop")
    )
    call = generate.StageCall(LLMClient(backend), store, None, "run-d")
    result = demonstrations.run({}, call, demonstrations.DemonstrationSettings())
    frame = result.tables[demonstrations.tables.DEMONSTRATION_PERSONAS]
    store.write_partitions(demonstrations.tables.DEMONSTRATION_PERSONAS, frame, partitions=None)
    assert set(frame["task"]) == set(TASKS) and frame.height == sum(
        len(demonstrations.load_pool(t).demonstrations) for t in TASKS.values()
    )
    return store


@pytest.mark.parametrize("mode", ["zero_shot", "few_shot", "persona_few_shot"])
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_works_in_every_mode(name, mode, derived_store):
    task = TASKS[name]
    backend = scripted()
    settings = task.settings(prompting=mode, personas=None, shots=2)
    output = generate.synthesize(task, HUB, LLMClient(backend), settings, shard="s", run_id="r", store=derived_store)
    assert not output.rejects, output.rejects[:1]
    rows = generate.frame(output.rows, generate.output_schema(task))
    assert rows.height == len(PERSONAS) and rows["item_id"].n_unique() == len(PERSONAS)
    assert set(rows["prompting"]) == {mode} and rows.select(list(task.columns)).null_count().sum_horizontal()[0] == 0
    shown = rows["demonstration_ids"].list.len().to_list()
    assert shown == [0 if mode == "zero_shot" else 2] * len(PERSONAS)
    first_step = [r for r in backend.calls if r.request_id.endswith(f":{task.steps[0].name}:1")]
    for request in first_step:
        user = request.messages[-1]["content"]
        assert user.count("<example>") == (0 if mode == "zero_shot" else 2)
        assert ("Written by: An author of demonstration" in user) == (mode == "persona_few_shot")


def test_few_shot_demonstrations_vary_across_personas_and_are_deterministic():
    task = TASKS["math"]
    settings = task.settings(prompting="few_shot", personas=None, shots=3)
    prepared = generate.prepare(task, settings)
    chosen = [tuple(d.id for d in item.demonstrations) for item in generate.items_for(prepared, HUB)]
    assert all(len(ids) == 3 for ids in chosen) and len(set(chosen)) > 1
    again = [tuple(d.id for d in item.demonstrations) for item in generate.items_for(prepared, HUB)]
    assert again == chosen
    trick = generate.prepare(TASKS["reasoning"], TASKS["reasoning"].settings(prompting="few_shot", variant="trick"))
    assert {d.meta["variant"] for d in trick.pool} == {"trick"}


def test_the_mode_changes_item_ids_and_the_code_version(derived_store):
    task = TASKS["instructions"]
    ids, versions = {}, {}
    for mode in ("zero_shot", "few_shot", "persona_few_shot"):
        settings = task.settings(prompting=mode, personas=None)
        output = generate.synthesize(
            task, HUB, LLMClient(scripted()), settings, shard="s", run_id="r", store=derived_store
        )
        ids[mode] = {row["item_id"] for row in output.rows}
        versions[mode] = generate.stage(task).code_version(settings, "model")
    assert not ids["zero_shot"] & ids["few_shot"] and not ids["few_shot"] & ids["persona_few_shot"]
    assert len(set(versions.values())) == 3
    focus = TASKS["math"]
    assert generate.stage(focus).code_version(focus.settings(focus="geometry"), "m") != generate.stage(
        focus
    ).code_version(focus.settings(), "m")


def test_persona_few_shot_without_derived_personas_says_what_to_materialize(tmp_path):
    task = TASKS["math"]
    with pytest.raises(demonstrations.DemonstrationError, match="materialize the `demonstrations` asset"):
        generate.synthesize(
            task,
            HUB,
            LLMClient(scripted()),
            task.settings(prompting="persona_few_shot"),
            shard="s",
            run_id="r",
            store=DeltaStore(root=str(tmp_path / "delta")),
        )


def test_a_users_pool_replaces_the_shipped_one_and_bad_lines_are_clear_errors(tmp_path, monkeypatch):
    folder = tmp_path / "pools"
    folder.mkdir()
    (folder / "instructions.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Explain knot number {i} to a beginner sailor."}) + "\n" for i in range(8))
    )
    monkeypatch.setenv(demonstrations.POOLS_ENV, str(folder))
    pool = demonstrations.load_pool(TASKS["instructions"])
    assert pool.uri == str(folder / "instructions.jsonl") and len(pool.demonstrations) == 8
    assert demonstrations.load_pool(TASKS["math"]).uri.endswith("data/demonstrations/math.jsonl")  # not replaced

    (folder / "math.jsonl").write_text(json.dumps({"question": "wrong field"}) + "\n")
    with pytest.raises(demonstrations.DemonstrationError, match=r"math.jsonl, line 1: not a math demonstration"):
        demonstrations.load_pool(TASKS["math"])


def test_every_shipped_pool_has_at_least_eight_valid_entries():
    for task in TASKS.values():
        pool = demonstrations.load_pool(task)
        assert len(pool.demonstrations) >= 8, task.name
        assert len({d.id for d in pool.demonstrations}) == len(pool.demonstrations)
        for variant in ("standard", "trick") if task.name == "reasoning" else ():
            fits = pool.for_settings(task, task.settings(variant=variant))
            assert len(fits) >= 6, variant


def test_multi_turn_conversations_alternate_roles_and_only_the_user_carries_the_persona():
    task = TASKS["conversations"]
    backend = scripted()
    output = generate.synthesize(
        task, HUB, LLMClient(backend), task.settings(personas=2, turns=3), shard="s", run_id="r"
    )
    assert len(output.rows) == 2
    for row in output.rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * 3 and row["turns"] == 3
    for request in backend.calls:
        text = json.dumps(list(request.messages))
        is_user_turn = ":user:" in request.request_id
        assert ("<persona>" in text) == is_user_turn
    assistant = [r for r in backend.calls if ":assistant:3" in r.request_id][0]
    assert [m["role"] for m in assistant.messages] == ["system"] + ["user", "assistant"] * 2 + ["user"]
    assert len(backend.calls) == 2 * 6


def test_a_conversation_killed_after_the_first_turn_resumes_from_the_cache(tmp_path):
    task = TASKS["conversations"]
    store = DeltaStore(root=str(tmp_path / "delta"))
    settings = task.settings(personas=2, turns=2)

    class Killed(RuntimeError):
        pass

    def dies_at_the_assistant(request):
        if ":assistant:" in request.request_id:
            raise Killed("the machine went away")
        return Completion(good_answer(request), finish_reason="stop")

    def client(backend):
        return LLMClient(backend, cache=ResponseCache(store, "synthetic-conversations.s"))

    with pytest.raises(Killed):
        generate.synthesize(task, HUB, client(ScriptedBackend(dies_at_the_assistant)), settings, shard="s", run_id="1")
    resumed_backend = scripted()
    resumed = client(resumed_backend)
    output = generate.synthesize(task, HUB, resumed, settings, shard="s", run_id="2")
    assert len(output.rows) == 2
    assert resumed.usage.cache_hits == 2  # both first user turns
    assert len(resumed_backend.calls) == 2 * 4 - 2 and not any(":user:1" in r.request_id for r in resumed_backend.calls)


def test_a_multi_step_reject_keeps_the_step_and_the_earlier_output():
    task = TASKS["tools"]

    def wrong_signature(request):
        if ":code:" in request.request_id:
            return Completion(json.dumps({"code": "def split_bill(amount):\n    return amount\n"}), "stop")
        return Completion(good_answer(request), "stop")

    output = generate.synthesize(
        task, HUB, LLMClient(ScriptedBackend(wrong_signature)), task.settings(personas=1), shard="s", run_id="r"
    )
    assert not output.rows and len(output.rejects) == 1
    reject = output.rejects[0]
    request = json.loads(reject["request"])
    assert reject["reason"].startswith("signature_mismatch") and request["step"] == "code"
    assert request["earlier"]["name"] == "split_bill" and "def split_bill(amount)" in reject["raw_output"]


def test_a_template_reading_an_undeclared_variable_fails_when_the_task_is_declared():
    typo = prompts.PromptTemplate(
        "typo_problem", 1, "{% block user %}{{ persona }} and {{ persona_name }}{% endblock %}"
    )
    with pytest.raises(TemplateInputError, match=r"typo_problem\.v1.*\{\{ persona_name \}\}.*declared inputs: "):
        SynthesisTask("typo", "x", (Step("problem", typo, instruction),), {"instruction": pl.String})
    # Declared, it loads; a step's `reads` declare earlier fields.
    SynthesisTask("ok", "x", (Step("p", typo, instruction),), {}, inputs=("persona", "persona_name"))

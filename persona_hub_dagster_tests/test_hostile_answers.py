"""One hostile model answer is one reject, never a stage failure (issue 22, item 3).

Every way an answer can fail to parse is a per-request reject with a named reason: `empty`, `truncated`,
`invalid_json`, `too_deep`, `number_too_large`, `duplicate_key`, `schema_mismatch`; integers declared as
integers accept only integers. The parser is fuzzed with more than 10^4 hostile answers, and one hostile answer
among good ones goes through Text-to-Persona as Dagster runs it, against a real HTTP server."""

import json
import math
import random
import subprocess
import sys
import time

import dagster as dg
import polars as pl
import pytest

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.llm import LLMClient, LLMRequest, ResponseCache, structured
from persona_hub_dagster.lib.llm import client as client_module
from persona_hub_dagster.lib.llm.structured import parse_structured
from persona_hub_dagster.lib.llm.types import BackendFailure, Completion
from persona_hub_dagster.lib.personas.text_to_persona import PERSONA_SCHEMA
from persona_hub_dagster.lib.stage import REJECT_ADVICE, empty_table_explanation
from persona_hub_dagster_tests.helpers.fault_server import FaultServer, completion
from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend

REASONS = ("empty", "truncated", "invalid_json", "too_deep", "number_too_large", "duplicate_key", "schema_mismatch")
JUDGE = {  # the judge's rubric: integer scores
    "type": "object",
    "properties": {"specific": {"type": "integer", "enum": [1, 2, 3, 4, 5]}, "why": {"type": "string"}},
    "required": ["specific"],
}
MAX_DEPTH = getattr(structured, "MAX_DEPTH", 32)
ANYTHING = {"type": "object"}  # nothing for validation to reject: what parsing lets through reaches the caller


def reason_of(text, schema=ANYTHING, finish="stop") -> str:
    parsed, error = parse_structured(text, schema, finish)
    assert parsed is None and error is not None, f"accepted: {str(parsed)[:200]}"
    return error


# ------------------------------------------------------------------------------------------------ findings


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 5_000, 10_000, 100_000])
@pytest.mark.parametrize("shape", ["array", "object", "inside"])
def test_deep_nesting_is_a_too_deep_reject(depth, shape):
    """Was RecursionError out of json.loads (or out of jsonschema's validation, for depths json.loads survives)."""
    text = {
        "array": "[" * depth + "]" * depth,
        "object": '{"a":' * depth + "1" + "}" * depth,
        "inside": '{"persona": ' + "[" * depth + "]" * depth + "}",
    }[shape]
    assert reason_of(text).startswith("too_deep: ")
    assert reason_of(text, PERSONA_SCHEMA).startswith("too_deep: ")


def test_nesting_up_to_the_limit_is_parsed_and_brackets_inside_strings_do_not_count():
    assert parse_structured('{"a":' * (MAX_DEPTH - 1) + "[]" + "}" * (MAX_DEPTH - 1), ANYTHING, "stop")[1] is None
    deep_looking = {"persona": "[{" * 50_000 + ' \\" ]]' + "\\\\"}
    parsed, error = parse_structured(json.dumps(deep_looking), ANYTHING, "stop")
    assert error is None and parsed == deep_looking


def test_validation_recursion_is_bounded_too():
    """A schema that recurses on itself: validation descends as deep as the answer does, so the depth bound must hold
    before validation, and validation at the bound must fit a stack that is already deep (a Dagster step)."""
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}}
    at_limit = '{"child":' * (MAX_DEPTH - 1) + "{}" + "}" * (MAX_DEPTH - 1)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(600)
    try:
        assert parse_structured(at_limit, tree, "stop")[1] is None
        assert reason_of('{"child":' * 2_000 + "{}" + "}" * 2_000, tree).startswith("too_deep")
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize(
    "number",
    [
        "9" * 5_000,  # was ValueError: Exceeds the limit (4300 digits) for integer string conversion
        "-" + "9" * 4_301,
        "9" * 30,  # beyond a 64-bit column
        str(2**63),
        "1" + "0" * 200 + ".5",
        "1e400",  # a double's infinity
        "-1e999",
        "0." + "0" * 5_000 + "1",
    ],
)
def test_huge_numbers_are_number_too_large(number):
    assert reason_of('{"specific": ' + number + "}").startswith("number_too_large: ")
    assert reason_of('{"specific": [' + number + "]}", JUDGE).startswith("number_too_large: ")


def test_numbers_in_range_are_numbers():
    text = json.dumps({"a": 2**63 - 1, "b": -(2**63), "c": 1.7976931348623157e308, "d": 5e-324, "e": -0.0})
    parsed, error = parse_structured(text, ANYTHING, "stop")
    assert error is None and parsed["a"] == 2**63 - 1 and parsed["c"] == 1.7976931348623157e308


@pytest.mark.parametrize(
    "text",
    [
        '{"specific": 1, "specific": 5}',  # was accepted: last wins
        '{"why": "x", "specific": 3, "why": "y"}',
        '{"specific": 1, "nested": {"k": 1, "k": 1}}',
        '{"specific": 1, "list": [{"k": 1}, {"k": 2, "k": 3}]}',
    ],
)
def test_duplicate_keys_are_a_duplicate_key_reject(text):
    assert reason_of(text, JUDGE).startswith("duplicate_key: ")


def test_keys_equal_only_after_unescaping_are_duplicates_and_distinct_keys_are_not():
    assert reason_of('{"specific": 1, "speci\\u0066ic": 5}', JUDGE).startswith("duplicate_key: ")
    assert parse_structured('{"specific": 1, "Specific": 5}', JUDGE, "stop") == ({"specific": 1, "Specific": 5}, None)


@pytest.mark.parametrize("value", ["4.0", "4e0", "40e-1", "true", '"4"'])
def test_integers_declared_as_integers_accept_only_integers(value):
    """4.0 passed `{"type": "integer", "enum": [1, ..., 5]}`: JSON Schema counts 4.0 as an integer, a score column
    does not."""
    assert reason_of('{"specific": ' + value + "}", JUDGE).startswith("schema_mismatch: specific")
    assert parse_structured('{"specific": 4}', JUDGE, "stop") == ({"specific": 4}, None)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    assert reason_of('{"specific": ' + constant + "}").startswith("invalid_json: ")
    assert reason_of('{"why": "x", "n": [1, ' + constant + "]}", JUDGE).startswith("invalid_json: ")


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ude00\\ud83d", "a\\ud83d"])
def test_lone_surrogates_are_invalid_json(escape):
    """A lone surrogate is a Python str no UTF-8 column can hold: it failed the stage when its row was written."""
    assert reason_of('{"persona": "' + escape + '"}', PERSONA_SCHEMA).startswith("invalid_json: ")
    assert reason_of('{"persona": "x", "k' + escape + '": 1}').startswith("invalid_json: ")


def test_surrogate_pairs_nul_and_other_unicode_are_text():
    text = '{"persona": "\\ud83d\\ude00 chef\\u0000 caf\\u00e9 \u4e2d\u6587 \U0001f373"}'
    parsed, error = parse_structured(text, PERSONA_SCHEMA, "stop")
    assert error is None and parsed["persona"] == "\U0001f600 chef\x00 caf\u00e9 \u4e2d\u6587 \U0001f373"


def test_a_fence_left_open_over_whitespace_is_parsed_in_linear_time():
    """The fence regex backtracked cubically: "```" and 4,000 characters of whitespace took 30 s, so one answer
    could hold a worker for hours. Run apart, so that the old code fails by its timeout instead of hanging."""
    code = (
        "import time\n"
        "from persona_hub_dagster.lib.llm.structured import parse_structured\n"
        "started = time.perf_counter()\n"
        "for text in ['```' + ' \\n' * 500_000 + 'x', '```json' + ' ' * 10**6 + '{}' + '\\t' * 10**6 + '``` x',\n"
        "             '```' + '`' * 10**6, ' ' * 10**6 + '{' + ' ' * 10**6]:\n"
        "    parse_structured(text, {'type': 'object'}, 'stop')\n"
        "print(time.perf_counter() - started)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing four 1-2 MB answers took more than 30 s")
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 5


def test_an_answer_with_many_schema_errors_is_judged_quickly():
    """Ranking every error of a 200,000-item array took 5 s: the reason is the best of the first few."""
    text = "[" + ",".join(['"a"'] * 200_000) + "]"
    started = time.perf_counter()
    reason = reason_of(text, {"type": "array", "items": {"type": "number"}})
    assert reason.startswith("schema_mismatch: ") and time.perf_counter() - started < 1


def test_fences_and_chatter_still_work():
    good = '{"persona": "a chef"}'
    for text in [f"```json\n{good}\n```", f"```\n{good}```", f"  ```json{good}```  ", f"Sure! {good} Hope it helps."]:
        assert parse_structured(text, PERSONA_SCHEMA, "stop") == ({"persona": "a chef"}, None), text


def test_truncated_answers_still_say_truncated():
    assert reason_of('{"persona": "a ch', PERSONA_SCHEMA, "length").startswith("truncated")
    assert reason_of('{"persona": "a ch', PERSONA_SCHEMA, "stop").startswith("invalid_json: ")


# ------------------------------------------------------------------------------------------------ the client


def request(i: int) -> LLMRequest:
    return LLMRequest.chat(f"text {i}", system="extract", json_schema=PERSONA_SCHEMA, request_id=f"r{i}")


HOSTILE = {
    1: "[" * 10_000 + "]" * 10_000,
    2: '{"persona": ' + "7" * 5_000 + "}",
    3: '{"persona": "a", "persona": "b"}',
    4: '{"persona": "\\udc00"}',
}


def hostile_or_good(r: LLMRequest) -> Completion:
    i = int(r.messages[-1]["content"].split()[1])
    return Completion(HOSTILE.get(i, json.dumps({"persona": f"reader {i}"})), "stop", 10, 5, 0.01)


def test_hostile_answers_are_rejects_of_their_requests_and_the_rest_are_answered(local_store):
    """Was: RecursionError (and ValueError) out of LLMClient.generate, for the whole batch."""
    client = LLMClient(ScriptedBackend(hostile_or_good), cache=ResponseCache(local_store, "hostile.s"))
    responses = client.generate([request(i) for i in range(6)])
    assert [r.parsed for r in responses if r.ok] == [{"persona": "reader 0"}, {"persona": "reader 5"}]
    reasons = {int(r.request_id[1:]): r.error.split(":")[0] for r in responses if not r.ok}
    assert reasons == {1: "too_deep", 2: "number_too_large", 3: "duplicate_key", 4: "invalid_json"}
    assert all(r.text == HOSTILE[i] for i, r in enumerate(responses) if i in HOSTILE)  # the raw text is kept
    assert client.usage.rejection_reasons == dict.fromkeys(reasons.values(), 1)
    assert client.usage.retries == 4 * (client.max_attempts - 1)  # asked again, with other seeds


def test_a_raw_lone_surrogate_from_the_backend_becomes_a_replacement_character_not_a_failure(local_store):
    """A server's JSON body can carry "\\ud800" in the answer's text: a str that the cache's Delta write (and the
    rejects table) could not encode, which failed the stage. The client replaces it as a UTF-8 decoder would (and
    joins a pair split in two); an escaped lone surrogate inside the answer's JSON is the parser's invalid_json."""
    answers = {"r1": '{"persona": "chef \ud800"}', "r2": '{"persona": "chef \ud83d\ude00"}', "r3": "\udfff oops"}
    backend = ScriptedBackend(lambda r: Completion(answers.get(r.request_id, '{"persona": "a"}'), "stop"))
    client = LLMClient(backend, cache=ResponseCache(local_store, "hostile.s"), max_attempts=1)
    first, lone, pair, garbage = client.generate([request(i) for i in range(4)])
    assert first.ok and lone.parsed == {"persona": "chef \ufffd"} and pair.parsed == {"persona": "chef \U0001f600"}
    assert garbage.error.startswith("invalid_json") and garbage.text == "\ufffd oops"
    assert len(ResponseCache(local_store, "hostile.s")) == 4  # all cached: each text is encodable


def test_any_other_exception_from_parsing_one_answer_is_a_parse_error_reject(monkeypatch):
    def parser_bug(text, schema, finish_reason):
        if "boom" in text:
            raise RuntimeError("a bug in the parser")
        return {"persona": text}, None

    monkeypatch.setattr(client_module, "parse_structured", parser_bug)
    backend = ScriptedBackend(lambda r: Completion("boom" if r.request_id == "r1" else "fine", "stop"))
    ok, bad = LLMClient(backend, max_attempts=2).generate([request(0), request(1)])
    assert ok.ok and bad.error == "parse_error: RuntimeError: a bug in the parser" and bad.text == "boom"
    assert bad.attempts == 2


def test_infrastructure_errors_still_raise():
    backend = ScriptedBackend(lambda r: Completion(None, error="http_503: overloaded"))
    with pytest.raises(BackendFailure):
        LLMClient(backend, max_attempts=1).generate([request(0)])


def test_the_new_reasons_have_advice():
    for reason in ("too_deep", "number_too_large", "duplicate_key", "parse_error"):
        assert reason in REJECT_ADVICE
    why = empty_table_explanation(["too_deep: nested 10000 deep (at most 32)"] * 2)
    assert why.startswith("every output was rejected: too_deep ×2 (try ") and REJECT_ADVICE["too_deep"] in why


# ------------------------------------------------------------------------------------------------ the stage

SHARD = "s"
TEXTS = [f"Text number {i}: a report about harbour pilots guiding ships through fog at night." for i in range(6)]
STAGE_HOSTILE = {  # by text: the answer the server gives to every attempt at it
    "Text number 1:": "[" * 10_000 + "]" * 10_000,
    "Text number 3:": '{"persona": ' + "9" * 5_000 + "}",
    "Text number 4:": '{"persona": "a harbour pilot \ud800"}',  # sent as an escape, arrives as a lone surrogate
    "Text number 5:": '{"persona": "a harbour pilot", "persona": "a ship captain"}',
}


class HostileServer(FaultServer):
    """Answers every request well, except the ones about STAGE_HOSTILE's texts."""

    def respond(self, handler, behaviour, body):
        prompt = json.dumps(body["messages"])
        for marker, answer in STAGE_HOSTILE.items():
            if marker in prompt:
                return self._send(handler, 200, completion(answer))
        return super().respond(handler, behaviour, body)


def test_one_hostile_answer_among_good_ones_is_a_reject_row_and_the_stage_succeeds(tmp_path, monkeypatch):
    from persona_hub_dagster.defs.partitions import text_shards
    from persona_hub_dagster.lib.storage import DeltaStore
    from persona_hub_dagster_tests.helpers.fault_server import run_text_to_persona

    store = DeltaStore(root=str(tmp_path / "delta"))
    raw = pl.DataFrame({"text_id": [f"t{i}" for i in range(len(TEXTS))], "text": TEXTS, "shard": SHARD})
    store.write_partitions(tables.RAW_TEXT, raw, partitions=[SHARD])
    monkeypatch.delenv("PERSONA_HUB_LLM_API_KEY", raising=False)
    server = HostileServer()
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(text_shards.name, [SHARD])
            result = run_text_to_persona(store, instance, server)
    finally:
        server.close()
    assert result.success
    assert store.row_count(tables.TEXT_PERSONAS, [SHARD]) == 3
    rejects = store.read(tables.TEXT_TO_PERSONA.rejects).sort("subject_id")
    assert rejects["subject_id"].to_list() == ["t1", "t3", "t5"]
    reasons = [r.split(":")[0] for r in rejects["reason"].to_list()]
    assert reasons == ["too_deep", "number_too_large", "duplicate_key"]
    kept = [len(STAGE_HOSTILE[f"Text number {i}:"]) for i in (1, 3, 5)]
    assert rejects["raw_output_chars"].to_list() == kept  # the raw text is kept (capped at its limit)
    personas = store.read(tables.TEXT_PERSONAS).sort("text_id")["persona"].to_list()
    assert personas == ["a reader", "a reader", "a harbour pilot \ufffd"]  # t4's lone surrogate, replaced
    usage = result.get_asset_materialization_events()[0].materialization.metadata
    assert usage["llm/rejection_reasons"].value == {"duplicate_key": 1, "number_too_large": 1, "too_deep": 1}


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ_SCHEMAS = [
    PERSONA_SCHEMA,
    JUDGE,
    ANYTHING,
    {"type": "array", "items": {"type": "number"}},
    {  # a tool spec: nested objects of any shape
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}, "example": {}},
        "required": ["name", "parameters"],
    },
    {"type": "object", "properties": {"child": {"$ref": "#"}, "n": {"type": "integer"}}},
]


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 6 else 5)
    if kind == 0:
        return rng.randint(-(2**70), 2**70) if rng.random() < 0.1 else rng.randint(-10, 10)
    if kind == 1:
        return rng.choice([0.5, -1e308, 1e-320, 4.0, rng.random()])
    if kind == 2:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice(["a chef", "specific", "", "[{", '"}]'])
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["persona", "specific", "why", "name", "child", "k"]): _random_json(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


_ALPHABET = list('abc {}[]":,\\/\x00\n\t\u00e9\u4e2d\U0001f600') + ["\\ud800", "\\u0000", "\\\\", '\\"', "\ud800"]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randrange(1, 4)):
        position = rng.randrange(len(chars) + 1)
        op = rng.randrange(3)
        if op == 0 and chars:
            del chars[min(position, len(chars) - 1)]
        elif op == 1:
            chars.insert(position, rng.choice(_ALPHABET))
        else:
            chars[position:position] = list(rng.choice(["[" * 50, '{"a":' * 40, "9" * 400, "NaN", ',"persona":1']))
    return "".join(chars)


def _fill(template: str, *values: str) -> str:
    """`template` with each "@" replaced by the next value."""
    for value in values:
        template = template.replace("@", value, 1)
    return template


def _hostile(rng: random.Random, i: int) -> tuple[str, str]:
    """The i-th hostile answer and its finish reason."""
    kind = i % 16
    n = rng.choice([MAX_DEPTH, MAX_DEPTH + 1, 100, 1_000, 5_000, 20_000])
    if kind == 0:  # deep nesting, pure or inside an answer, closed or not
        opener = rng.choice(["[", '{"a":', '{"persona":[', '[{"k":'])
        closer = {"[": "]", '{"a":': "}", '{"persona":[': "]}", '[{"k":': "}]"}[opener]
        text = opener * n + rng.choice(["1", "[]", "{}", '"x"']) + closer * rng.choice([n, n // 2, 0])
    elif kind == 1:  # huge numbers
        digits = "9" * rng.choice([19, 20, 300, 4_300, 4_301, 10_000, 100_000])
        number = rng.choice([digits, "-" + digits, "1e" + digits[:5], "0." + digits, digits + ".0", f"1{digits}e-9"])
        text = _fill(rng.choice(['{"persona": @}', '{"specific": @}', "[@]", "@", '{"n": [1, @]}']), number)
    elif kind == 2:  # NaN, Infinity
        first, second = rng.choice(["NaN", "Infinity", "-Infinity", "1"]), rng.choice(["NaN", "-Infinity", "inf"])
        text = f'{{"specific": {first}, "n": [{second}]}}'
    elif kind == 3:  # duplicate keys, anywhere
        key = rng.choice(["persona", "specific", "speci\\u0066ic", "k"])
        inner = _fill('{"@": 1, "@": 5}', key.replace("\\u0066", "f"), key)
        text = _fill(rng.choice(["@", '{"persona": "a", "x": @}', "[@]"]), inner)
    elif kind == 4:  # surrogates, escaped and raw
        text = _fill(
            '{"persona": "@", "specific": 2}',
            rng.choice(
                ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ude00\\ud83d", "\ud800", "x\\ud83d", "\udc80\udc80"]
            ),
        )
    elif kind == 5:  # NUL and control characters, escaped and raw
        text = _fill('{"persona": "@"}', rng.choice(["\\u0000", "\x00", "a\x00b", "\x1f", "\\u001f", "\n"]))
    elif kind == 6:  # truncated JSON
        whole = json.dumps(_random_json(rng))
        text = whole[: rng.randrange(len(whole) + 1)]
    elif kind == 7:  # fences
        body = json.dumps(_random_json(rng))
        text = _fill(rng.choice(["```json\n@\n```", "```@", "```json@``` trailing", "``` @ ```", "```\n\n@"]), body)
        text = text.replace("\n", "\n" + " " * rng.choice([0, 1, 1000]))
    elif kind == 8:  # chatter
        body = json.dumps(_random_json(rng))
        text = rng.choice(["Sure! @ Hope that helps.", "} @ {", "{ oops @", "Here: @ }}}", "@@"]).replace("@", body)
    elif kind == 9:  # long strings (1 MB for a few)
        size = 10**6 if i % 1024 == 9 else rng.choice([600, 601, 10**4])
        fill = rng.choice(["a", "[", '\\"', "\\\\", "\u4e2d", "\\u0000"])
        text = _fill('{"persona": "@"}', fill * (size // len(fill)))
    elif kind == 10:  # wrong types
        text = json.dumps(
            rng.choice(
                [
                    [],
                    "a chef",
                    42,
                    None,
                    True,
                    {"persona": 1},
                    {"persona": None},
                    {"persona": ["a"]},
                    {"specific": "4"},
                    {"specific": 4.0},
                    {"specific": True},
                ]
            )
        )
    elif kind == 11:  # random (mostly valid) documents
        text = json.dumps(_random_json(rng), ensure_ascii=rng.random() < 0.5)
    elif kind == 12:  # mutated documents
        text = _mutate(rng, json.dumps(_random_json(rng)))
    elif kind == 13:  # garbage
        text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(60)))
    elif kind == 14:  # empty and whitespace
        text = rng.choice(["", " ", "\n\t", "``````", "```json```", "{}", "[]", "null"])
    else:  # brackets inside strings (must not count as depth)
        text = json.dumps({"persona": "[" * n + "{" * n, "why": "]" * n})
    finish = "length" if rng.random() < 0.2 else "stop"
    return text, finish


def _check_accepted(parsed, schema) -> None:
    """What the parser hands over can be written to a column: finite numbers within 64 bits, encodable strings,
    bounded depth, no duplicate keys (a dict cannot hold them anyway), and valid under the schema."""

    def walk(value, depth):  # depth: the containers around value
        if isinstance(value, dict | list):
            assert depth < MAX_DEPTH
        if isinstance(value, dict):
            for key, item in value.items():
                key.encode()
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, str):
            value.encode()
        elif isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63

    walk(parsed, 0)
    json.dumps(parsed, allow_nan=False)
    if schema is JUDGE:
        assert type(parsed["specific"]) is int


FUZZ_COUNT = 12_000


def test_fuzz_no_hostile_answer_escapes_the_parser():
    rng = random.Random(22)
    seen: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(FUZZ_COUNT):
        text, finish = _hostile(rng, i)
        schema = FUZZ_SCHEMAS[i % len(FUZZ_SCHEMAS)]
        try:
            parsed, error = parse_structured(text, schema, finish)
        except BaseException as exc:  # noqa: BLE001 - nothing may escape
            pytest.fail(f"answer {i} ({text[:80]!r}...) raised {type(exc).__name__}: {str(exc)[:200]}")
        if error is None:
            _check_accepted(parsed, schema)
            seen["ok"] = seen.get("ok", 0) + 1
        else:
            assert parsed is None and error.split(":", 1)[0] in REASONS, error[:200]
            seen[error.split(":", 1)[0]] = seen.get(error.split(":", 1)[0], 0) + 1
    elapsed = time.perf_counter() - started
    print(f"fuzz: {FUZZ_COUNT} hostile answers in {elapsed:.2f} s: {dict(sorted(seen.items()))}")
    assert set(seen) == {"ok", *REASONS}  # every outcome is exercised
    assert elapsed < 20

"""What makes an answer usable, per task: each parser turns a schema-valid answer into row fields, or raises
`Rejected` with a reason (`<code>: <detail>`) that lands in the task's rejects table beside the raw output.

The schema (enforced by the backend where it can, always validated by the client) already guarantees the shape;
these checks are about content: a math problem that gives its answer away, a tool whose code defines another
signature, an NPC in a place the world does not have.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import regex

from persona_hub_dagster.lib.generation import Rejected, normalize_description, placeholder_echo
from persona_hub_dagster.lib.synthesis.steps import Item, TaskContext

# A question or problem that gives its own answer away: "Solution:", "Answer: 42", "the answer is".
_LEAKED_ANSWER = re.compile(r"(?im)^\s*(solution|answer)\s*[:：]|\bthe (final |correct )?answer is\b")
# A model talking about itself or the request instead of writing the text.
_META_TALK = re.compile(
    r"(?i)\bas an ai\b|\b(?:an? |the )?(?:ai )?language model\b|\bI(?:'m| am) (?:just )?an? (?:ai|assistant)\b|"
    r"\bI (?:cannot|can't|am unable to) (?:write|help|provide)\b|\bhere(?:'s| is) (?:an?|the|your) (?:article|answer)\b"
)
MIN_KNOWLEDGE_WORDS = 150
# What a tool's implementation may import: computation, text and dates; nothing that reaches files, processes or
# the network.
ALLOWED_IMPORTS = frozenset(
    {
        "bisect",
        "calendar",
        "cmath",
        "collections",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "heapq",
        "itertools",
        "json",
        "math",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "textwrap",
        "typing",
        "unicodedata",
    }
)


def _text(answer: Mapping[str, Any], key: str) -> str:
    return normalize_description(str(answer.get(key) or ""))


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------------- math


def math_problem(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    problem = _text(answer, "problem")
    if len(problem) < 40:
        raise Rejected(f"too_short: a {len(problem)}-character problem cannot be challenging")
    if _LEAKED_ANSWER.search(answer["problem"]):
        raise Rejected("contains_solution: the problem states its answer or solution")
    if not re.search(r"\d", problem):
        raise Rejected("no_numbers: the problem gives no quantities to compute with")
    return {"problem": problem}


# ---------------------------------------------------------------------------------------------------- reasoning


def reasoning_problem(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    question, solution, why = _text(answer, "question"), _text(answer, "answer"), _text(answer, "justification")
    if len(question) < 30:
        raise Rejected(f"too_short: a {len(question)}-character question")
    if not solution or placeholder_echo(solution):
        raise Rejected("no_answer: the intended answer is empty")
    if len(why) < 10 or placeholder_echo(why):
        raise Rejected("no_justification: the answer comes without a justification")
    stated = _words(solution) >= 4 and _folded(solution).rstrip(".") in _folded(question)
    if _LEAKED_ANSWER.search(answer["question"]) or stated:
        raise Rejected("states_answer: the question gives its own answer away")
    return {"question": question, "answer": solution, "justification": why}


def _folded(text: str) -> str:
    return re.sub(r"[^\w ]+", "", text.casefold()).strip()


# ---------------------------------------------------------------------------------------------------- instructions


def instruction(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    text = _text(answer, "instruction")
    if len(text) < 15 or placeholder_echo(text):
        raise Rejected(f"too_short: a {len(text)}-character instruction")
    return {"instruction": text}


# ---------------------------------------------------------------------------------------------------- conversations


def user_turn(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    message = _text(answer, "message")
    if len(message) < 10 or placeholder_echo(message):
        raise Rejected(f"too_short: a {len(message)}-character user message")
    earlier = [m["content"].casefold() for m in item.fields.get("messages", []) if m["role"] == "user"]
    if message.casefold() in earlier:
        raise Rejected("repeated_turn: the user repeated an earlier message")
    return _with_message(item, "user", message)


def assistant_turn(answer: str, item: Item, context: TaskContext) -> dict[str, Any]:
    reply = answer.strip()
    if len(reply) < 2:
        raise Rejected("empty: the assistant said nothing")
    return _with_message(item, "assistant", reply)


def _with_message(item: Item, role: str, content: str) -> dict[str, Any]:
    messages = [*item.fields.get("messages", []), {"role": role, "content": content}]
    transcript = "\n\n".join(f"{m['role'].title()}: {m['content']}" for m in messages)
    return {"messages": messages, "transcript": transcript}


# ---------------------------------------------------------------------------------------------------- knowledge


def knowledge_article(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    title = _text(answer, "title")
    body = str(answer.get("body") or "").strip()
    if len(title) < 3 or placeholder_echo(title):
        raise Rejected("no_title: the article has no title")
    words = _words(body)
    if words < MIN_KNOWLEDGE_WORDS:
        raise Rejected(f"too_short: {words} words (at least {MIN_KNOWLEDGE_WORDS})")
    if _META_TALK.search(title) or _META_TALK.search(body):
        raise Rejected("meta_talk: the text talks about being an AI or about the request instead of the subject")
    return {"title": title, "body": body}


# ---------------------------------------------------------------------------------------------------- npc

NPC_TEXT_FIELDS = ("name", "role", "backstory", "personality", "quest_hook")


def npc_character(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    fields = {key: _text(answer, key) for key in (*NPC_TEXT_FIELDS, "faction", "location")}
    empty = [key for key in NPC_TEXT_FIELDS if not fields[key] or placeholder_echo(fields[key])]
    if empty:
        raise Rejected(f"missing_fields: {', '.join(empty)} empty")
    lines = [normalize_description(str(line)) for line in answer.get("dialogue") or []]
    lines = [line for line in lines if line and not placeholder_echo(line)]
    if not lines:
        raise Rejected("missing_fields: no sample dialogue")
    world = context.world
    if fields["location"] not in world.locations:
        raise Rejected(f"unknown_location: {fields['location']!r} is not a location of {world.name}")
    if fields["faction"] not in world.factions:
        raise Rejected(f"unknown_faction: {fields['faction']!r} is not a faction of {world.name}")
    return {**fields, "dialogue": lines}


# ---------------------------------------------------------------------------------------------------- tools


# A tool's parameters are a schema the model wrote, so it is untrusted like any answer: a `pattern` is a regex the
# model chose (`(a+)+$` backtracks for hours in `re`, holding the worker), a `$ref` may point anywhere or at itself.
# Patterns are matched by the `regex` engine under a time limit; references and patternProperties (whose keys
# `re` would match unbounded) are refused: function-calling schemas do without them.
PATTERN_SECONDS = 0.2
UNSUPPORTED_KEYWORDS = ("$ref", "$dynamicRef", "patternProperties")


def _bounded_pattern(validator, pattern, instance, schema):
    if not validator.is_type(instance, "string"):
        return
    try:
        found = regex.search(pattern, instance, timeout=PATTERN_SECONDS)
    except TimeoutError:
        yield jsonschema.ValidationError(f"the pattern {pattern!r} takes too long to match")
    except regex.error as exc:
        yield jsonschema.ValidationError(f"the pattern {pattern!r} is not a regular expression: {exc}")
    else:
        if found is None:
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


ToolParametersValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _bounded_pattern})


def _keywords(schema: Any) -> set[str]:
    """Every key used anywhere in a JSON document (answers are at most 32 levels deep: structured.MAX_DEPTH)."""
    if isinstance(schema, dict):
        return set(schema).union(*(_keywords(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_keywords(v) for v in schema))
    return set()


def tool_spec(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    name = str(answer.get("name") or "").strip()
    if not name.isidentifier() or keyword.iskeyword(name):
        raise Rejected(f"invalid_name: {name!r} is not a Python identifier")
    description = _text(answer, "description")
    if len(description) < 10:
        raise Rejected("no_description: the tool is not described")
    parameters = answer.get("parameters")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise Rejected(f"invalid_parameters: not a valid JSON Schema: {exc.message}"[:300]) from None
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise Rejected("invalid_parameters: the parameters must be a JSON Schema of type object")
    unsupported = sorted(_keywords(parameters) & set(UNSUPPORTED_KEYWORDS))
    if unsupported:
        raise Rejected(f"invalid_parameters: {', '.join(unsupported)} not supported in tool parameters; inline them")
    properties = parameters.get("properties") or {}
    bad = [p for p in properties if not str(p).isidentifier() or keyword.iskeyword(p)]
    if bad:
        raise Rejected(f"invalid_parameters: {bad} cannot be Python parameter names")
    missing = [p for p in parameters.get("required") or [] if p not in properties]
    if missing:
        raise Rejected(f"invalid_parameters: required {missing} are not among the properties")
    example = answer.get("example_arguments")
    try:
        ToolParametersValidator(parameters).validate(example)
    except jsonschema.ValidationError as exc:
        raise Rejected(
            f"invalid_example: the example arguments do not fit the parameters: {exc.message}"[:300]
        ) from None
    spec = {
        "name": name,
        "description": description,
        "parameters": parameters,
        "returns": _text(answer, "returns"),
        "example_arguments": example,
    }
    # The row keeps the JSON columns; the code step's prompt shows the whole spec.
    return {
        **spec,
        "parameters": json.dumps(parameters, sort_keys=True),
        "example_arguments": json.dumps(example, sort_keys=True),
        "spec": json.dumps(spec, indent=2, ensure_ascii=False),
    }


def tool_code(answer: Mapping[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    code = _without_fence(str(answer.get("code") or ""))
    name, declared = item.fields["name"], list(json.loads(item.fields["parameters"]).get("properties") or {})
    problem = check_tool_code(code, name, declared)
    if problem:
        raise Rejected(problem)
    return {"code": code}


def check_tool_code(code: str, name: str, parameters: list[str]) -> str | None:
    """None when `code` parses, defines `name` at module level with exactly `parameters`, and imports only from
    ALLOWED_IMPORTS; otherwise the reason."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"syntax_error: line {exc.lineno}: {exc.msg}"
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name]
    if not functions:
        return f"missing_function: the code defines no top-level function {name!r}"
    args = functions[-1].args
    if args.vararg or args.kwarg:
        return f"signature_mismatch: {name} takes *args/**kwargs instead of the declared parameters"
    defined = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if sorted(defined) != sorted(parameters):
        return f"signature_mismatch: {name}({', '.join(defined)}) does not match the spec's ({', '.join(parameters)})"
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] if node.level == 0 else ["(relative import)"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            modules = ["__import__"]
        forbidden = [m for m in modules if m.split(".")[0] not in ALLOWED_IMPORTS]
        if forbidden:
            return f"forbidden_import: {', '.join(forbidden)} (allowed: {', '.join(sorted(ALLOWED_IMPORTS))})"
    return None


def _without_fence(code: str) -> str:
    """Models often wrap code in a Markdown fence even inside JSON."""
    stripped = code.strip()
    if stripped.startswith("```"):
        lines = stripped.splitlines()[1:]
        if lines and lines[-1].strip().startswith("```"):
            lines = lines[:-1]
        stripped = "\n".join(lines)
    return stripped.strip() + "\n"

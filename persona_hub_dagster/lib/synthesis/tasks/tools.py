"""tools: tools a persona would need, in two steps as the paper describes: an interface spec (name, description,
JSON Schema parameters, return value, example call), then a Python implementation of it.

Evaluated by running every implementation in the sandbox (lib/evaluation/tools_eval.py): the static checks here
again, then imports, the function, its signature, the spec's example call.
"""

from __future__ import annotations

import ast
import json
import keyword
from collections.abc import Mapping
from typing import Any

import jsonschema
import polars as pl
import regex

from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import Item, TaskContext, chat_turns, json_object, string, text

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

# The shape of a tool spec. Each parameter is at least a JSON type and a description, so a grammar-constrained model
# writes a real JSON Schema; the parser still checks the whole of it with jsonschema's meta-schema.
TOOL_SPEC_SCHEMA = json_object(
    name={"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "minLength": 1, "maxLength": 80},
    description=string(1000),
    parameters={
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["object"]},
            "properties": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "enum": ["string", "number", "integer", "boolean", "array", "object"],
                        },
                        "description": {"type": "string"},
                    },
                    "required": ["type", "description"],
                },
            },
            "required": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["type", "properties", "required"],
    },
    returns=string(500),
    example_arguments={"type": "object"},
)


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
    description = text(answer, "description")
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
        "returns": text(answer, "returns"),
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


def _evaluation(task: SynthesisTask):
    # Imported when the registry builds the stage: tools_eval imports this module's check_tool_code.
    from persona_hub_dagster.lib.evaluation import tools_eval

    return tools_eval.stage(task)


def _tool_spec(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        "parameters": json.loads(row["parameters"]),
        "returns": row["returns"],
    }


TASK = SynthesisTask(
    name="tools",
    description="Tools a persona would need, in two steps as the paper describes: an interface spec (name, "
    "description, JSON Schema parameters, return value, example call), then a Python implementation of it.",
    steps=(
        Step(
            "spec", "tool_spec", tool_spec, TOOL_SPEC_SCHEMA, sampling=SamplingParams(temperature=0.8, max_tokens=384)
        ),
        Step(
            "code",
            "tool_code",
            tool_code,
            json_object(code=string(6000)),
            sampling=SamplingParams(temperature=0.4, max_tokens=480),
            reads=("spec",),
        ),
    ),
    columns={
        "name": pl.String,
        "description": pl.String,
        "parameters": pl.String,  # JSON Schema, as JSON
        "returns": pl.String,
        "example_arguments": pl.String,  # as JSON
        "code": pl.String,
    },
    text=lambda row: f"{row['name']}: {row['description']}\n{row['returns']}",
    evaluations=(Evaluation(stage=_evaluation, runs_programs=True),),
    release=ReleaseSpec(
        chat=lambda row: chat_turns(
            ("user", "Implement this tool as one Python function:\n" + json.dumps(_tool_spec(row), indent=2)),
            ("assistant", f"```python\n{row['code']}```"),
        )
    ),
    small={"personas": 2},
)

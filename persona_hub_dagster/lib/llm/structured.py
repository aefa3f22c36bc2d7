"""Structured output: turning model text into a validated object, or a named reason why not.

Backends constrain decoding to the schema where they can (llama.cpp grammars, vLLM guided decoding, OpenAI
`json_schema`); the output is still parsed and validated here, because constraints do not stop truncation and
some servers only honour `json_object`.

A model's answer is untrusted input: parsing is bounded by construction, so that no answer can raise out of
`parse_structured` or hold a worker (one answer's problem is that request's reject, never the stage's failure):
- nesting is measured before anything recurses (a linear scan that skips strings), so neither json.loads nor the
  schema's validation can exceed the interpreter's recursion limit;
- a number is converted only when its literal is short, and must fit a 64-bit integer or a finite double (what a
  table column holds): a 5,000-digit integer is `number_too_large`, not Python's ValueError;
- NaN and Infinity are not JSON; a string with a lone surrogate cannot be written to any UTF-8 column;
- a key given twice is `duplicate_key` (which value the model meant is unknown), not "last wins";
- `"type": "integer"` accepts integers only (JSON Schema counts 4.0 as an integer; a score column does not);
- the fence and chatter around the JSON are removed without backtracking regular expressions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from itertools import islice
from typing import Any

import jsonschema

# The deepest nesting of arrays and objects an answer may have: the project's schemas need under 10 (a tool's
# parameters are the deepest); validation recurses a few frames per level (32 levels of a self-referencing schema
# validate within a recursion limit of 140), so they fit well within the limit also from deep inside a Dagster step.
MAX_DEPTH = 32
# The longest number literal converted: a double needs at most 24 characters, a 64-bit integer 20.
MAX_NUMBER_CHARS = 100
_INT64 = 2**63
MAX_REASON_CHARS = 500
MAX_ERRORS_RANKED = 32

# A JSON string, or, when it is never closed, the rest of the text; possessive, so it cannot backtrack.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]++")


class _Reject(Exception):
    """Raised by the decoder's hooks: ends parsing with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_structured(text: str | None, schema: Mapping[str, Any], finish_reason: str | None) -> tuple[Any, str | None]:
    """(parsed object, None) when `text` is JSON valid under `schema`; (None, reason) otherwise.

    Reasons (the part before the colon): `empty`; `truncated` (the token limit cut the output); `invalid_json`
    (also NaN, Infinity and lone surrogates); `too_deep` (nested more than MAX_DEPTH); `number_too_large` (beyond a
    64-bit integer or a double, or a literal of more than MAX_NUMBER_CHARS characters); `duplicate_key`;
    `schema_mismatch`.
    """
    if text is None or not text.strip():
        return None, "empty"
    candidate = _json_candidate(text)
    depth = _nesting_beyond(candidate, MAX_DEPTH)
    if depth:
        return None, f"too_deep: nested {depth}+ deep (at most {MAX_DEPTH})"
    try:
        parsed = json.loads(
            candidate,
            object_pairs_hook=_object,
            parse_int=_integer,
            parse_float=_double,
            parse_constant=_constant,
        )
    except _Reject as exc:
        return None, _bounded(exc.reason)
    except json.JSONDecodeError as exc:
        if finish_reason == "length":
            return None, "truncated: the output hit max_tokens before the JSON was complete"
        return None, _bounded(f"invalid_json: {exc.msg} at char {exc.pos}")
    except RecursionError:  # cannot happen after the scan; kept so that it can never escape
        return None, f"too_deep: nested too deep to parse (at most {MAX_DEPTH})"
    surrogate = _lone_surrogate(parsed)
    if surrogate:
        return None, f"invalid_json: a lone surrogate ({surrogate}) in a string: not text any column can hold"
    try:
        errors = _validator(json.dumps(schema, sort_keys=True)).iter_errors(parsed)
        # The best of the first few: an array of 10^5 wrong items would otherwise build 10^5 errors (seconds).
        error = jsonschema.exceptions.best_match(islice(errors, MAX_ERRORS_RANKED))
    except RecursionError:  # as above: the depth bound keeps validation shallow
        return None, f"too_deep: nested too deep to validate (at most {MAX_DEPTH})"
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, _bounded(f"schema_mismatch: {where}: {error.message}")
    return parsed, None


def schema_instructions(schema: Mapping[str, Any]) -> str:
    """What to tell a model whose server cannot enforce the schema (json_object mode)."""
    return (
        "Answer with a single JSON object and nothing else. It must validate against this JSON schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def _json_candidate(text: str) -> str:
    """The JSON part of a reply: code fences removed, else the outermost {...} when there is chatter around it.
    (String operations only: a regular expression here backtracked cubically on an open fence over whitespace.)"""
    stripped = text.strip()
    if len(stripped) >= 6 and stripped.startswith("```") and stripped.endswith("```"):
        inner = stripped[3:-3]
        return (inner[4:] if inner.startswith("json") else inner).strip()
    if stripped.startswith(("{", "[")):
        return stripped
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped


def _nesting_beyond(text: str, limit: int) -> int:
    """0 when `text` nests arrays and objects at most `limit` deep, else the depth at which the scan stopped
    (limit + 1). Brackets inside strings do not count; the scan sees the brackets json.loads would descend into
    before any error it would raise, so json.loads never descends deeper than this allows."""
    if text.count("[") + text.count("{") <= limit:
        return 0
    depth = 0
    for bracket in _NOT_BRACKETS.sub("", _STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return depth
        elif depth:
            depth -= 1
    return 0


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(f"duplicate_key: {key[:100]!r} is given more than once in one object")
            seen.add(key)
    return result


def _integer(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Reject(f"number_too_large: an integer of {len(literal)} digits (at most 64 bits)")
    value = int(literal)
    if not -_INT64 <= value < _INT64:
        raise _Reject(f"number_too_large: {literal} does not fit 64 bits")
    return value


def _double(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _Reject(f"number_too_large: a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(literal)
    if not math.isfinite(value):
        raise _Reject(f"number_too_large: {literal} is beyond a double")
    return value


def _constant(name: str) -> Any:
    raise _Reject(f"invalid_json: {name} is not JSON")


def _lone_surrogate(parsed: Any) -> str | None:
    """The first lone surrogate in the parsed strings (keys included), escaped; None when all are text."""
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start : exc.end].encode("utf-8", "backslashreplace").decode("ascii")
    return None


def _bounded(reason: str) -> str:
    """A reason fit for a table: at most MAX_REASON_CHARS, and encodable (an answer's lone surrogate escaped)."""
    return reason[:MAX_REASON_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    strict = jsonschema.validators.extend(
        validator_class, type_checker=validator_class.TYPE_CHECKER.redefine("integer", _strict_integer)
    )
    return strict(schema)

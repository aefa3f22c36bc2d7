"""Structured output: turning model text into a validated object, or a named reason why not.

Backends constrain decoding to the schema where they can (llama.cpp grammars, vLLM guided decoding, OpenAI
`json_schema`); the output is still parsed and validated here, because constraints do not stop truncation and
some servers only honour `json_object`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_structured(text: str | None, schema: Mapping[str, Any], finish_reason: str | None) -> tuple[Any, str | None]:
    """(parsed object, None) when `text` is JSON valid under `schema`; (None, reason) otherwise.

    Reasons: `empty`, `truncated` (the token limit cut the output), `invalid_json: ...`, `schema_mismatch: ...`.
    """
    if text is None or not text.strip():
        return None, "empty"
    candidate = _json_candidate(text)
    try:
        parsed = json.loads(candidate)
    except json.JSONDecodeError as exc:
        if finish_reason == "length":
            return None, "truncated: the output hit max_tokens before the JSON was complete"
        return None, f"invalid_json: {exc.msg} at char {exc.pos}"
    error = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(parsed))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, f"schema_mismatch: {where}: {error.message}"[:500]
    return parsed, None


def schema_instructions(schema: Mapping[str, Any]) -> str:
    """What to tell a model whose server cannot enforce the schema (json_object mode)."""
    return (
        "Answer with a single JSON object and nothing else. It must validate against this JSON schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def _json_candidate(text: str) -> str:
    """The JSON part of a reply: code fences removed, else the outermost {...} when there is chatter around it."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        return fenced.group(1)
    if stripped.startswith(("{", "[")):
        return stripped
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)

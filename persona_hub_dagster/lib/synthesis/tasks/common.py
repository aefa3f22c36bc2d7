"""What several task modules share: answer-schema and chat-message builders, and the validator helpers.

A validator (a step's `parse`) turns a schema-valid answer into row fields, or raises `Rejected` with a reason
(`<code>: <detail>`) that lands in the task's rejects table beside the raw output. The schema (enforced by the
backend where it can, always validated by the client) already guarantees the shape; validators are about content: a
math problem that gives its answer away, a tool whose code defines another signature, an NPC in a place the world
does not have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from persona_hub_dagster.lib.personas import normalize_description
from persona_hub_dagster.lib.synthesis.steps import Item, TaskContext

__all__ = ["Item", "TaskContext"]  # what a validator is given besides the answer, for the task modules' signatures

# A question or problem that gives its own answer away: "Solution:", "Answer: 42", "the answer is".
LEAKED_ANSWER = re.compile(r"(?im)^\s*(solution|answer)\s*[:：]|\bthe (final |correct )?answer is\b")


def chat_turns(*pairs: tuple[str, str | None]) -> list[dict[str, str]]:
    """Chat messages from (role, content) pairs, leaving out empty ones."""
    return [{"role": role, "content": content} for role, content in pairs if content]


def json_object(**properties: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of an answer: these properties, all required, nothing else."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


def string(max_length: int = 2000) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def text(answer: Mapping[str, Any], key: str) -> str:
    """An answer's field as one normalized line of text ("" when missing)."""
    return normalize_description(str(answer.get(key) or ""))


def words(value: str) -> int:
    return len(value.split())


def folded(value: str) -> str:
    """Case-folded, without punctuation: for comparing what two texts say."""
    return re.sub(r"[^\w ]+", "", value.casefold()).strip()

"""conversations: multi-turn conversations; the persona plays the user, the same model without a persona plays the
assistant, turn by turn (each turn its own cached call). `messages` is the chat format trainers use.

Judged against a rubric (coherent, in persona, helpful) on the whole transcript.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.evaluation.judge import Rubric
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisSettings, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import Item, TaskContext, json_object, string, text


@dataclass(frozen=True)
class ConversationSettings(SynthesisSettings):
    turns: int = setting(3, "User turns per conversation, each answered by the assistant (the paper: multi-turn).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.turns < 1:
            raise ValueError("turns must be at least 1")


MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})


def user_turn(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    message = text(answer, "message")
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
    return {"messages": messages, "transcript": transcript(messages)}


def transcript(messages: list[Mapping[str, str]]) -> str:
    return "\n\n".join(f"{m['role'].title()}: {m['content']}" for m in messages)


TASK = SynthesisTask(
    name="conversations",
    description="Multi-turn conversations: the persona plays the user, the same model without a persona plays the "
    "assistant, turn by turn (each turn its own cached call). `messages` is the chat format trainers use.",
    steps=(
        Step(
            "user",
            "conversation_user",
            user_turn,
            json_object(message=string()),
            sampling=SamplingParams(temperature=0.8, max_tokens=160),
            reads=("transcript",),
        ),
        Step(
            "assistant",
            "conversation_assistant",
            assistant_turn,
            sampling=SamplingParams(temperature=0.7, max_tokens=320),
            chat=True,
        ),
    ),
    columns={"messages": pl.List(MESSAGE), "turns": pl.Int32},
    settings=ConversationSettings,
    context=lambda s: TaskContext(s, row={"turns": s.turns}),
    rounds=lambda settings: settings.turns,
    text=lambda row: "\n".join(m["content"] for m in row["messages"]),
    evaluations=(
        Evaluation(
            rubric=Rubric(
                "judge_conversations",
                ("coherent", "in_persona", "helpful"),
                lambda row: {"item": prompts.delimited("conversation", transcript(row["messages"]))},
            ),
            small={"max_tokens": 96},
        ),
    ),
    release=ReleaseSpec(chat=lambda row: list(row["messages"])),
    small={"personas": 2, "turns": 2, "max_tokens": 200},
)

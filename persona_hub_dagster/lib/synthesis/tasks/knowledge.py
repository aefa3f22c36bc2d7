"""knowledge: knowledge-rich texts, a Quora-style article the persona would write from their own expertise.

Judged against a rubric (accurate, informative, on the persona's expertise).
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.evaluation.judge import Rubric
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import Item, TaskContext, chat_turns, json_object, string, text

MIN_KNOWLEDGE_WORDS = 150
# A model talking about itself or the request instead of writing the text.
_META_TALK = re.compile(
    r"(?i)\bas an ai\b|\b(?:an? |the )?(?:ai )?language model\b|\bI(?:'m| am) (?:just )?an? (?:ai|assistant)\b|"
    r"\bI (?:cannot|can't|am unable to) (?:write|help|provide)\b|\bhere(?:'s| is) (?:an?|the|your) (?:article|answer)\b"
)


def knowledge_article(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    title = text(answer, "title")
    body = str(answer.get("body") or "").strip()
    if len(title) < 3 or placeholder_echo(title):
        raise Rejected("no_title: the article has no title")
    count = len(body.split())
    if count < MIN_KNOWLEDGE_WORDS:
        raise Rejected(f"too_short: {count} words (at least {MIN_KNOWLEDGE_WORDS})")
    if _META_TALK.search(title) or _META_TALK.search(body):
        raise Rejected("meta_talk: the text talks about being an AI or about the request instead of the subject")
    return {"title": title, "body": body}


TASK = SynthesisTask(
    name="knowledge",
    description="Knowledge-rich texts: a Quora-style article the persona would write from their own expertise.",
    steps=(
        Step(
            "article",
            "knowledge_article",
            knowledge_article,
            json_object(title=string(300), body=string(8000)),
            sampling=SamplingParams(temperature=0.7, max_tokens=512),
        ),
    ),
    columns={"title": pl.String, "body": pl.String},
    text=lambda row: f"{row['title']}\n{row['body']}",
    evaluations=(
        Evaluation(
            rubric=Rubric(
                "judge_knowledge",
                ("accurate", "informative", "on_expertise"),
                lambda row: {"item": prompts.delimited("article", f"{row['title']}\n\n{row['body']}")},
            ),
            small={"max_tokens": 96},
        ),
    ),
    release=ReleaseSpec(chat=lambda row: chat_turns(("user", row["title"]), ("assistant", row["body"]))),
    small={"personas": 2, "prompting": "few_shot", "shots": 1},
)

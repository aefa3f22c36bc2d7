"""The synthesis tasks: the paper's six use cases (math counts for two: math and logical reasoning). `TASKS` is the
registry the asset factory builds `synthetic/<task>` from; a new task is one `SynthesisTask(...)` here, its
template(s) in lib/prompts/, its parser in validators.py, and a demonstration pool in data/demonstrations/.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.synthesis import validators
from persona_hub_dagster.lib.synthesis.steps import Step, SynthesisSettings, SynthesisTask, TaskContext
from persona_hub_dagster.lib.synthesis.world import World, load_world


def _turns(*pairs: tuple[str, str | None]) -> list[dict[str, str]]:
    """Chat messages from (role, content) pairs, leaving out empty ones."""
    return [{"role": role, "content": content} for role, content in pairs if content]


def _object(**properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


def _string(max_length: int = 2000) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


# ---------------------------------------------------------------------------------------------------- math

# The paper's variants ("create a geometry problem", "an olympiad-level problem"); any other text is a topic.
MATH_FOCUS = {
    "any": "",
    "grade_school": "a grade-school word problem that takes a few steps of arithmetic",
    "geometry": "a geometry problem",
    "olympiad": "an olympiad-level competition problem",
}


@dataclass(frozen=True)
class MathSettings(SynthesisSettings):
    focus: str = setting(
        "any", f"The kind of problem: {', '.join(MATH_FOCUS)}, or free text (e.g. 'probability with dice')."
    )


def _math_context(settings: MathSettings) -> TaskContext:
    focus = MATH_FOCUS.get(settings.focus, f"a problem about {settings.focus.strip()}")
    return TaskContext(settings, inputs={"focus": focus}, row={"focus": settings.focus})


MATH = SynthesisTask(
    name="math",
    description="Challenging math problems grounded in a persona's work or interests (problem only, no solution).",
    steps=(Step("problem", "math_problem", validators.math_problem, _object(problem=_string())),),
    columns={"problem": pl.String, "focus": pl.String},
    inputs=("persona", "focus"),
    settings=MathSettings,
    context=_math_context,
    text=lambda row: row["problem"],
    # The release joins in the verified solution (eval/math): the problem and how it is solved.
    chat=lambda row: _turns(("user", row["problem"]), ("assistant", row.get("solution"))),
)

# ---------------------------------------------------------------------------------------------------- reasoning

REASONING_VARIANTS = {
    "standard": (
        "a logical reasoning problem (deduction, constraints, scheduling, ordering, truth-tellers and liars, ...) "
        "set in the person's world, solvable by careful reasoning alone and with exactly one correct answer"
    ),
    "trick": (
        "a trick question in the style of Ruozhiba: it reads like an ordinary question but rests on a false "
        "premise, wordplay or a hidden absurdity that a careful reader must notice; the answer points that out"
    ),
}


@dataclass(frozen=True)
class ReasoningSettings(SynthesisSettings):
    variant: str = setting("standard", "standard: logic puzzles; trick: false premises and wordplay (Ruozhiba).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in REASONING_VARIANTS:
            raise ValueError(f"variant must be one of {list(REASONING_VARIANTS)}, not {self.variant!r}")


REASONING = SynthesisTask(
    name="reasoning",
    description="Logical reasoning problems grounded in a persona, with the intended answer and a short "
    "justification in separate columns (variant `trick`: questions with a false premise or wordplay).",
    steps=(
        Step(
            "problem",
            "reasoning_problem",
            validators.reasoning_problem,
            _object(question=_string(), answer=_string(500), justification=_string(1500)),
            sampling=SamplingParams(temperature=0.8, max_tokens=384),
        ),
    ),
    columns={"question": pl.String, "answer": pl.String, "justification": pl.String, "variant": pl.String},
    inputs=("persona", "variant"),
    settings=ReasoningSettings,
    context=lambda s: TaskContext(s, inputs={"variant": REASONING_VARIANTS[s.variant]}, row={"variant": s.variant}),
    pool_filter=lambda entry, settings: entry.get("variant", "standard") == settings.variant,
    text=lambda row: row["question"],
    chat=lambda row: _turns(
        ("user", row["question"]), ("assistant", f"{row['justification']}\n\nAnswer: {row['answer']}")
    ),
)

# ---------------------------------------------------------------------------------------------------- instructions

INSTRUCTIONS = SynthesisTask(
    name="instructions",
    description="Requests a persona would make to an AI assistant, in the persona's voice (user prompts).",
    steps=(
        Step(
            "instruction",
            "instruction",
            validators.instruction,
            _object(instruction=_string()),
            sampling=SamplingParams(temperature=0.8, max_tokens=160),
        ),
    ),
    columns={"instruction": pl.String},
    chat=lambda row: _turns(("user", row["instruction"])),  # user prompts: the responses are the trainer's to make
)

# ---------------------------------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class ConversationSettings(SynthesisSettings):
    turns: int = setting(3, "User turns per conversation, each answered by the assistant (the paper: multi-turn).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.turns < 1:
            raise ValueError("turns must be at least 1")


MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})

CONVERSATIONS = SynthesisTask(
    name="conversations",
    description="Multi-turn conversations: the persona plays the user, the same model without a persona plays the "
    "assistant, turn by turn (each turn its own cached call). `messages` is the chat format trainers use.",
    steps=(
        Step(
            "user",
            "conversation_user",
            validators.user_turn,
            _object(message=_string()),
            sampling=SamplingParams(temperature=0.8, max_tokens=160),
            reads=("transcript",),
        ),
        Step(
            "assistant",
            "conversation_assistant",
            validators.assistant_turn,
            sampling=SamplingParams(temperature=0.7, max_tokens=320),
            chat=True,
        ),
    ),
    columns={"messages": pl.List(MESSAGE), "turns": pl.Int32},
    settings=ConversationSettings,
    context=lambda s: TaskContext(s, row={"turns": s.turns}),
    rounds=lambda settings: settings.turns,
    text=lambda row: "\n".join(m["content"] for m in row["messages"]),
    chat=lambda row: list(row["messages"]),
)

# ---------------------------------------------------------------------------------------------------- knowledge

KNOWLEDGE = SynthesisTask(
    name="knowledge",
    description="Knowledge-rich texts: a Quora-style article the persona would write from their own expertise.",
    steps=(
        Step(
            "article",
            "knowledge_article",
            validators.knowledge_article,
            _object(title=_string(300), body=_string(8000)),
            sampling=SamplingParams(temperature=0.7, max_tokens=512),
        ),
    ),
    columns={"title": pl.String, "body": pl.String},
    text=lambda row: f"{row['title']}\n{row['body']}",
    chat=lambda row: _turns(("user", row["title"]), ("assistant", row["body"])),
)

# ---------------------------------------------------------------------------------------------------- npc


@dataclass(frozen=True)
class NpcSettings(SynthesisSettings):
    world_file: str | None = setting(
        None,
        "A world sheet (Markdown with '## Locations' and '## Factions' lists of **bold** names), local or s3://; "
        "null: the shipped world, The Ember Reach.",
    )


def npc_schema(world: World | None) -> dict[str, Any]:
    """With a world, locations and factions are enumerated (the backend's grammar keeps the model inside the world;
    the parser checks it again for backends without one)."""
    return _object(
        name=_string(120),
        role=_string(200),
        faction={"type": "string", "enum": list(world.factions)} if world else _string(200),
        location={"type": "string", "enum": list(world.locations)} if world else _string(200),
        backstory=_string(),
        personality=_string(500),
        dialogue={"type": "array", "items": _string(500), "minItems": 1, "maxItems": 4},
        quest_hook=_string(1000),
    )


def _npc_context(settings: NpcSettings) -> TaskContext:
    world = load_world(settings.world_file)
    return TaskContext(
        settings,
        inputs={"world": prompts.delimited("world", world.prompt_text)},
        row={"world": world.name},
        world=world,
        located={"world_uri": world.uri},
    )


NPC_FIELDS = ("name", "role", "faction", "location", "backstory", "personality", "dialogue", "quest_hook")

NPC = SynthesisTask(
    name="npc",
    description="Game NPCs the persona would design, or could be, for a game world given as context (a world sheet).",
    steps=(
        Step(
            "character",
            "npc_character",
            validators.npc_character,
            lambda context: npc_schema(context.world if context else None),
            sampling=SamplingParams(temperature=0.8, max_tokens=480),
        ),
    ),
    columns={
        "name": pl.String,
        "role": pl.String,
        "faction": pl.String,
        "location": pl.String,
        "backstory": pl.String,
        "personality": pl.String,
        "dialogue": pl.List(pl.String),
        "quest_hook": pl.String,
        "world": pl.String,
        "world_uri": pl.String,  # the sheet it was designed for (the judge reads it)
    },
    inputs=("persona", "world"),
    settings=NpcSettings,
    context=_npc_context,
    text=lambda row: "\n".join(
        [row["name"], row["role"], row["backstory"], row["personality"], *row["dialogue"], row["quest_hook"]]
    ),
    chat=lambda row: _turns(
        ("system", f"You design non-player characters for the game world {row['world']}."),
        ("user", f"Design an NPC for this world that this person would create: {row.get('persona') or ''}"),
        ("assistant", json.dumps({k: row[k] for k in NPC_FIELDS}, ensure_ascii=False)),
    ),
)

# ---------------------------------------------------------------------------------------------------- tools

# The shape of a tool spec. Each parameter is at least a JSON type and a description, so a grammar-constrained model
# writes a real JSON Schema; the parser still checks the whole of it with jsonschema's meta-schema.
TOOL_SPEC_SCHEMA = _object(
    name={"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "minLength": 1, "maxLength": 80},
    description=_string(1000),
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
    returns=_string(500),
    example_arguments={"type": "object"},
)

TOOLS = SynthesisTask(
    name="tools",
    description="Tools a persona would need, in two steps as the paper describes: an interface spec (name, "
    "description, JSON Schema parameters, return value, example call), then a Python implementation of it.",
    steps=(
        Step(
            "spec",
            "tool_spec",
            validators.tool_spec,
            TOOL_SPEC_SCHEMA,
            sampling=SamplingParams(temperature=0.8, max_tokens=384),
        ),
        Step(
            "code",
            "tool_code",
            validators.tool_code,
            _object(code=_string(6000)),
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
    chat=lambda row: _turns(
        ("user", "Implement this tool as one Python function:\n" + json.dumps(_tool_spec(row), indent=2)),
        ("assistant", f"```python\n{row['code']}```"),
    ),
)


def _tool_spec(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        "parameters": json.loads(row["parameters"]),
        "returns": row["returns"],
    }


TASKS: dict[str, SynthesisTask] = {
    task.name: task for task in (MATH, REASONING, INSTRUCTIONS, CONVERSATIONS, KNOWLEDGE, NPC, TOOLS)
}

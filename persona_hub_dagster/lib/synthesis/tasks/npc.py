"""npc: game NPCs the persona would design, or could be, for a game world given as context (a world sheet).

The world's locations and factions bound the answer (the schema enumerates them; the validator checks them again);
judged against a rubric that reads the world sheet the NPC was designed for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts
from persona_hub_dagster.lib.evaluation.judge import Rubric
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.personas import normalize_description
from persona_hub_dagster.lib.prompts import placeholder_echo
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Rejected
from persona_hub_dagster.lib.synthesis.steps import Evaluation, ReleaseSpec, Step, SynthesisSettings, SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.common import Item, TaskContext, chat_turns, json_object, string, text
from persona_hub_dagster.lib.synthesis.world import World, load_world


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
    return json_object(
        name=string(120),
        role=string(200),
        faction={"type": "string", "enum": list(world.factions)} if world else string(200),
        location={"type": "string", "enum": list(world.locations)} if world else string(200),
        backstory=string(),
        personality=string(500),
        dialogue={"type": "array", "items": string(500), "minItems": 1, "maxItems": 4},
        quest_hook=string(1000),
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
NPC_TEXT_FIELDS = ("name", "role", "backstory", "personality", "quest_hook")


def npc_character(answer: dict[str, Any], item: Item, context: TaskContext) -> dict[str, Any]:
    fields = {key: text(answer, key) for key in (*NPC_TEXT_FIELDS, "faction", "location")}
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


def _judged(row: dict[str, Any]) -> dict[str, str]:
    """The judge sees the character and the world sheet it was designed for."""
    fields = {k: row[k] for k in ("name", "role", "faction", "location", "backstory", "personality", "quest_hook")}
    character = json.dumps({**fields, "dialogue": list(row["dialogue"])}, ensure_ascii=False, indent=1)
    world = load_world(row.get("world_uri"))
    return {"item": prompts.delimited("npc", character), "world": prompts.delimited("world", world.prompt_text)}


TASK = SynthesisTask(
    name="npc",
    description="Game NPCs the persona would design, or could be, for a game world given as context (a world sheet).",
    steps=(
        Step(
            "character",
            "npc_character",
            npc_character,
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
    evaluations=(
        Evaluation(
            rubric=Rubric(
                "judge_npc", ("world_consistent", "self_consistent", "playable"), _judged, inputs=("item", "world")
            ),
            small={"max_tokens": 96},
        ),
    ),
    release=ReleaseSpec(
        chat=lambda row: chat_turns(
            ("system", f"You design non-player characters for the game world {row['world']}."),
            ("user", f"Design an NPC for this world that this person would create: {row.get('persona') or ''}"),
            ("assistant", json.dumps({k: row[k] for k in NPC_FIELDS}, ensure_ascii=False)),
        )
    ),
    small={"personas": 2, "prompting": "persona_few_shot", "shots": 1},
)

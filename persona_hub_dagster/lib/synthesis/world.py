"""The game world the NPC task designs characters for: a world sheet.

A world sheet is a Markdown file: prose for tone and history, and two lists whose **bold** names are the only
locations and factions an NPC may have:

    ## Locations
    - **Brinehold** — the new capital on stilts over a warm lagoon ...
    ## Factions
    - **The Tide Court** — merchant-judges who rule the harbours ...

The project ships one original world, The Ember Reach (`persona_hub_dagster/data/worlds/ember_reach.md`); the NPC
task's `world_file` setting points at another (a local path or an object-store URI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.locations import normalize_location

_COMMENT = re.compile(r"<!--.*?-->\s*", re.DOTALL)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_BOLD_ITEM = re.compile(r"^\s*[-*]\s+\*\*(.+?)\*\*")
_SECTIONS = {"locations": ("locations", "regions", "places"), "factions": ("factions", "groups", "organizations")}


class WorldSheetError(ValueError):
    pass


@dataclass(frozen=True)
class World:
    name: str  # the sheet's first heading
    uri: str
    text: str
    locations: tuple[str, ...]
    factions: tuple[str, ...]

    @property
    def version(self) -> str:
        return content_id(self.text)[:12]

    @property
    def prompt_text(self) -> str:
        """The sheet as the model sees it: without Markdown comments (notes for the sheet's editors)."""
        return _COMMENT.sub("", self.text).strip()


def shipped_world_uri() -> str:
    return str(resources.files("persona_hub_dagster") / "data" / "worlds" / "ember_reach.md")


def load_world(location: str | None = None) -> World:
    """The world sheet at `location` (default: the shipped Ember Reach), parsed and checked."""
    uri = normalize_location(location) if location else shipped_world_uri()
    return _load(uri)


@cache
def _load(uri: str) -> World:
    try:
        with filesystems.open_binary(uri) as handle:
            text = handle.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorldSheetError(f"Cannot read the world sheet {uri}: {exc}") from exc
    return parse_world(text, uri)


def parse_world(text: str, uri: str = "<text>") -> World:
    name, section, found = None, None, {"locations": [], "factions": []}
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            title = heading.group(2).strip()
            name = name or title
            section = next((key for key, words in _SECTIONS.items() if title.lower() in words), None)
            continue
        item = _BOLD_ITEM.match(line)
        if item and section:
            found[section].append(item.group(1).strip())
    missing = [key for key, values in found.items() if not values]
    if missing:
        raise WorldSheetError(
            f"The world sheet {uri} has no {' and no '.join(missing)}: list them under a '## Locations' and a "
            "'## Factions' heading as '- **Name** — description' items."
        )
    return World(name or "Untitled world", uri, text, tuple(found["locations"]), tuple(found["factions"]))

"""Prompt templates: versioned Jinja files, one per LLM call the method makes.

A template file is `<name>.v<N>.jinja` with two blocks, `system` and `user`. Its `version` is
`<name>.v<N>+<hash of the file>`: bumping N says "this is a new prompt", and the content hash makes sure that even an
edit without a bump changes the version. Stages put the version in every row they write and in their asset's
code_version, so editing a prompt marks exactly the assets that use it stale in the UI.

Texts and personas go into prompts through `delimited()`: inside a named tag whose closing form cannot occur in the
content, so a text that contains instructions (or a fake closing tag) stays data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import jinja2
import jinja2.meta

_FILE_RE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<number>\d+)\.jinja$")


class PromptNotFound(LookupError):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    number: int
    source: str

    @property
    def version(self) -> str:
        digest = hashlib.blake2b(self.source.encode("utf-8"), digest_size=4).hexdigest()
        return f"{self.name}.v{self.number}+{digest}"

    @property
    def variables(self) -> frozenset[str]:
        """The variables the template reads: what a stage must pass (checked when a task is declared)."""
        return frozenset(jinja2.meta.find_undeclared_variables(_environment().parse(self.source)))

    def render(self, **variables: object) -> tuple[str | None, str]:
        """(system message or None, user message)."""
        blocks = self.render_blocks(**variables)
        if not blocks.get("user"):
            raise ValueError(f"Prompt {self.name}.v{self.number} has no `user` block")
        return blocks.get("system") or None, blocks["user"]

    def render_blocks(self, **variables: object) -> dict[str, str]:
        """{"system": ..., "user": ...}: the blocks the template has, rendered."""
        template = _compiled(self.source)
        context = template.new_context(dict(variables))
        return {
            block: "".join(template.blocks[block](context)).strip()
            for block in ("system", "user")
            if block in template.blocks
        }


def load(name: str, number: int | None = None) -> PromptTemplate:
    """The template `name` at version `number` (default: the highest shipped)."""
    versions = _shipped().get(name)
    if not versions:
        raise PromptNotFound(
            f"No prompt template {name!r} in persona_hub_dagster/lib/prompts (have {sorted(_shipped())})"
        )
    number = max(versions) if number is None else number
    if number not in versions:
        raise PromptNotFound(f"Prompt {name!r} has versions {sorted(versions)}, not v{number}")
    return PromptTemplate(name, number, versions[number])


def names() -> list[str]:
    """Every shipped template's name."""
    return sorted(_shipped())


def delimited(tag: str, content: str) -> str:
    """`<tag>content</tag>`, with any `</tag` inside the content defused so the block cannot be closed early."""
    safe = re.sub(rf"</\s*{re.escape(tag)}", f"< /{tag}", content, flags=re.IGNORECASE)
    return f"<{tag}>\n{safe}\n</{tag}>"


@cache
def _shipped() -> dict[str, dict[int, str]]:
    found: dict[str, dict[int, str]] = {}
    for entry in resources.files(__package__).iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.setdefault(match["name"], {})[int(match["number"])] = entry.read_text(encoding="utf-8")
    return found


@lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    """Compiling is ~1000x the cost of rendering; a stage renders one template once per request."""
    return _environment().from_string(source)


@cache
def _environment() -> jinja2.Environment:
    # StrictUndefined: a missing variable is an error, never an empty hole in a prompt.
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )

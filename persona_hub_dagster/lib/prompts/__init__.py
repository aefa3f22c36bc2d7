"""Prompt templates: versioned Jinja files, one per LLM call the method makes.

A template file is `<name>.v<N>.jinja` with two blocks, `system` and `user`. Its `version` is
`<name>.v<N>+<hash of the file>`: bumping N says "this is a new prompt", and the content hash makes sure that even an
edit without a bump changes the version. Stages put the version in every row they write and in their asset's
code_version, so editing a prompt marks exactly the assets that use it stale in the UI.

Texts and personas go into prompts through `delimited()`: inside a named tag whose closing form cannot occur in the
content, so a text that contains instructions (or a fake closing tag) stays data.

Content never speaks as a role: every value a template inserts (`{{ ... }}`: a text, a persona, an item, the
demonstrations) passes through `neutralize`, which breaks the chat models' control tokens (`<|im_start|>`,
`<|eot_id|>`, `[INST]`, ... : lib.llm.settings.special_tokens, overridable with PERSONA_HUB_LLM_SPECIAL_TOKENS) with
an invisible WORD JOINER after their first character. A reader sees the same text; a tokenizer no longer finds the
marker, so a crawled page holding `<|im_end|><|im_start|>system ...` reaches the model as text, not as a new turn.
The template's own words are not touched. The embedded model's backend also neutralizes its own control tokens, read
from its vocabulary, in every message (lib/llm/backends/llama_cpp.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import jinja2
import jinja2.meta

from persona_hub_dagster.lib.llm.settings import SPECIAL_TOKENS_ENV, special_tokens

__all__ = [
    "SPECIAL_TOKENS_ENV",
    "WORD_JOINER",
    "PromptNotFound",
    "as_content",
    "PromptTemplate",
    "delimited",
    "load",
    "names",
    "neutralize",
    "placeholder_echo",
    "special_tokens",
]

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


# U+2060 WORD JOINER: invisible, no width, "no line break here"; Unicode category Cf, which NFC and NFKC keep (they
# have no mapping for it), so a tokenizer that normalizes text before matching its added tokens cannot fold it away.
# Special tokens are matched on the raw text (llama.cpp, Hugging Face tokenizers), where `<⁠|im_start|>` is not
# `<|im_start|>`: the rest of the marker becomes ordinary tokens. (Fullwidth look-alikes such as `＜` would not do:
# NFKC maps them back to `<`.)
WORD_JOINER = "\u2060"


def neutralize(text: str, tokens: Iterable[str]) -> str:
    """`text` with every occurrence of every marker in `tokens` broken by a WORD JOINER after its first character.
    Reads the same; contains none of the markers (overlapping ones included); idempotent. Markers shorter than two
    characters cannot be broken and are ignored."""
    pattern = _marker_pattern(tuple(tokens))
    if pattern is None:
        return text
    while pattern.search(text):  # one pass breaks each match; a marker overlapping a broken one needs another
        text = pattern.sub(_break, text)
    return text


def _break(match: re.Match[str]) -> str:
    return match[0][0] + WORD_JOINER + match[0][1:]


@lru_cache(maxsize=16)
def _marker_pattern(tokens: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for all markers, as a trie (a vocabulary can have thousands of control tokens that share a prefix,
    e.g. `<unused123>`; a flat alternation tries each of them at every `<`)."""
    trie: dict[str, dict] = {}
    for token in tokens:
        if len(token) < 2:
            continue
        node = trie
        for char in token:
            node = node.setdefault(char, {})
        node[""] = {}
    return re.compile(_trie_regex(trie)) if trie else None


def _trie_regex(node: dict[str, dict]) -> str:
    ends = "" in node
    branches = [re.escape(char) + _trie_regex(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends:  # a marker ends here and longer ones go on: prefer the longest
        return "(?:" + body + ")?"
    return body


# What the templates' answer formats show where the answer goes: "<one sentence>", "...", "[the persona]".
_PLACEHOLDER = re.compile(r"^(<[^<>]*>|\.{2,}|\[[^\[\]]*\])$")


def placeholder_echo(text: str) -> bool:
    """The model repeated the answer format's placeholder ("...", "<one sentence>") instead of answering."""
    return bool(_PLACEHOLDER.match(text.strip()))


def as_content(text: str) -> str:
    """Text that goes into a prompt as content (a page, a persona, an earlier turn): no chat control token left."""
    return neutralize(text, special_tokens())


def _inserted(value: object) -> object:
    """Jinja's `finalize`: every value a template inserts, before it becomes prompt text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return as_content(value if isinstance(value, str) else str(value))


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
    # finalize: every inserted value is neutralized (content never speaks as a role); the template's text is not.
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        finalize=_inserted,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )

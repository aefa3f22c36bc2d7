"""Stage settings: frozen dataclasses whose fields carry their default and their meaning, said once.

Every setting a user can change per run is a `setting(default, doc)` field of its stage's dataclass in lib/; defs/
builds the run config (type, default, description) from the dataclass, and turns the run config back into it. So a
default lives in one place, and the code versions built from the defaults follow it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, doc: str) -> Any:
    """A field of a stage's settings: its default and what it means."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def settings_from(settings_type: type[T], values: Mapping[str, Any]) -> T:
    """Settings from plain values (run config): lists become the tuples the dataclass declares; the dataclass's own
    validation runs."""
    defaults = settings_type()
    coerced = {
        name: tuple(value) if isinstance(getattr(defaults, name), tuple) and isinstance(value, list) else value
        for name, value in values.items()
    }
    return dataclasses.replace(defaults, **coerced)

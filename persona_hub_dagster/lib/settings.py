"""Stage settings: frozen dataclasses whose fields carry their default and their meaning, said once.

Every setting a user can change per run is a `setting(default, doc)` field of its stage's dataclass in lib/; defs/
builds the run config (type, default, description) from the dataclass, and turns the run config back into it. So a
default lives in one place, and the code versions built from the defaults follow it.
"""

from __future__ import annotations

import dataclasses
import os
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


# ---------------------------------------------------------------------------------------------- deployment defaults

STAGE_SETTINGS_ENV = "PERSONA_HUB_STAGE_SETTINGS"


class StageSettingsError(ValueError):
    """The deployment's stage settings file is unreadable or names something that does not exist."""


def deployment_overrides() -> dict[str, dict[str, Any]]:
    """The stage settings of the file PERSONA_HUB_STAGE_SETTINGS names; {} when unset.

    Runs that automation, schedules and sensors launch carry no run config: this file is how a deployment sizes
    them. Its values become the run config's defaults and enter the code versions, so changing it marks the stages
    it touches stale (and re-runs them only with PERSONA_HUB_RERUN_ON_CODE_CHANGE=1)."""
    path = os.environ.get(STAGE_SETTINGS_ENV)
    return read_stage_settings(path) if path else {}


# `synthesis_tasks: small` in a settings file: every synthesis task and its evaluations at the small size their
# declarations give (lib/synthesis/small.py); the file's own entries for those ops are applied over it.
SMALL_TASKS_KEY, SMALL_TASKS_VALUE = "synthesis_tasks", "small"


def read_stage_settings(path: str) -> dict[str, dict[str, Any]]:
    """`{op: {setting: value}}` from a YAML or JSON file (local or `s3://`) shaped like a run config's `ops:` block
    (with or without each op's `config:` level), plus, with `synthesis_tasks: small`, the tasks' small settings."""
    import yaml

    from persona_hub_dagster.lib import filesystems

    try:
        with filesystems.open_binary(path) as handle:
            loaded = yaml.safe_load(handle.read().decode("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise StageSettingsError(f"{STAGE_SETTINGS_ENV}={path}: cannot read it ({error})") from error
    small = loaded.pop(SMALL_TASKS_KEY, None) if isinstance(loaded, dict) else None
    if small not in (None, SMALL_TASKS_VALUE):
        raise StageSettingsError(
            f"{STAGE_SETTINGS_ENV}={path}: {SMALL_TASKS_KEY} takes {SMALL_TASKS_VALUE!r}, not {small!r}"
        )
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
        raise StageSettingsError(f"{STAGE_SETTINGS_ENV}={path}: expected a mapping of op name to settings")
    ops = {op: dict(values.get("config", values)) for op, values in loaded.items()}
    if small:
        from persona_hub_dagster.lib.synthesis.small import small_stage_settings

        derived = small_stage_settings()
        ops = {**derived, **{op: {**derived.get(op, {}), **values} for op, values in ops.items()}}
    return ops


def deployment_defaults(settings_type: type[T], op: str, overrides: Mapping[str, Mapping[str, Any]]) -> T:
    """The settings dataclass's defaults with the deployment's overrides for `op` applied (and validated)."""
    values = overrides.get(op, {})
    names = {f.name for f in dataclasses.fields(settings_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise StageSettingsError(
            f"{STAGE_SETTINGS_ENV}: {op} has no setting {', '.join(unknown)}; "
            f"its settings are {', '.join(sorted(names))}"
        )
    try:
        return settings_from(settings_type, values)
    except (TypeError, ValueError) as error:
        raise StageSettingsError(f"{STAGE_SETTINGS_ENV}: {op}: {error}") from error

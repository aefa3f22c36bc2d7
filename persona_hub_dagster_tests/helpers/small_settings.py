"""The tests' stage settings for every task, from the task registry: each task's declared small settings (the demo's:
lib/synthesis/small.py), a test's own choices for the ops it cares about, and derived personas for exactly the
pools a persona_few_shot run shows. A new task runs in these tests at its own small size with no edit here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persona_hub_dagster.lib.synthesis import demonstrations, generate
from persona_hub_dagster.lib.synthesis.small import small_stage_settings
from persona_hub_dagster.lib.synthesis.tasks import TASKS


def small_ops(*, personas: int | None = None, ops: Mapping[str, Mapping[str, Any]] = {}) -> dict[str, dict]:
    """{op: settings}: the small settings, every task sampling at most `personas` personas, with `ops` replacing
    whole entries; derive_demonstration_personas (its settings from `ops`) derives the pools persona_few_shot shows."""
    settings = small_stage_settings()
    synthesize = {generate.stage(task).op: name for name, task in TASKS.items()}
    if personas is not None:
        for op in synthesize:
            settings[op]["personas"] = min(settings[op].get("personas", personas), personas)
    settings.update({op: dict(values) for op, values in ops.items()})
    shown = [name for op, name in synthesize.items() if settings[op].get("prompting") == "persona_few_shot"]
    settings[demonstrations.STAGE.op] = {**ops.get(demonstrations.STAGE.op, {}), "tasks": shown}
    return settings


def run_config_ops(settings: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The run config's `ops:` block for `{op: settings}`."""
    return {op: {"config": dict(values)} for op, values in settings.items()}

"""The whole code location: a snapshot of the asset graph and its automation, and dg's own validation.

A change to the graph (asset keys, partitions, deps, checks, code versions, jobs, sensors, schedules, resources)
fails this test until the snapshot is regenerated with `UPDATE_SNAPSHOTS=1 make test` and reviewed in the diff.

The snapshot keeps what a reviewer must see and the project decides, not what Dagster renders: an asset's automation
condition is the label the project's constructor gives it (defs/automation.py: "follows inputs", "summarizes inputs")
and the inputs it narrows to, as asset keys, never Dagster's text of the whole condition tree, which a Dagster upgrade
rewrites.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from persona_hub_dagster.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
REPO = Path(__file__).resolve().parents[1]


def automation(condition: dg.AutomationCondition | None, graph) -> str | None:
    """An automation condition's identity: its label (what defs/automation.py named it), then the inputs that trigger
    it when it narrows them (`reads`) and the inputs that need not exist (`optional`), resolved to asset keys."""
    if condition is None:
        return None
    triggers: set[str] = set()
    optional: set[str] = set()
    stack = [condition]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        for selection, found in (
            (getattr(node, "allow_selection", None), triggers),
            (getattr(node, "ignore_selection", None), optional),
        ):
            if selection is not None:
                found.update(key.to_user_string() for key in selection.resolve(graph))
    parts = [condition.get_label() or type(condition).__name__]
    if triggers:
        parts.append(f"on {', '.join(sorted(triggers))}")
    if optional:
        parts.append(f"optional {', '.join(sorted(optional))}")
    return "; ".join(parts)


def describe(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": str(node.partitions_def) if node.partitions_def else None,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "code_version": node.code_version,
            "checks": sorted(c.name for c in node.check_keys),
            "kinds": sorted(node.kinds),
            "automation_condition": automation(node.automation_condition, graph),
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "pools": sorted(node.pools or []),
        }
    jobs = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        jobs[job.name] = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
    sensors = {
        s.name: {
            "jobs": sorted(t.job_name for t in s.targets),
            "default_status": s.default_status.value,
            "minimum_interval_seconds": s.minimum_interval_seconds,
        }
        for s in definitions.sensors or []
    }
    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name}
        for s in definitions.schedules or []
    }
    return {
        "assets": assets,
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
        "resources": sorted(definitions.resources),
        "executor": definitions.executor.name if definitions.executor else None,
    }


def test_definitions_match_the_snapshot():
    current = describe(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), f"{SNAPSHOT} is missing; create it with UPDATE_SNAPSHOTS=1"
    assert current == json.loads(SNAPSHOT.read_text()), (
        "The code location changed. If that is intended, regenerate the snapshot with "
        "`UPDATE_SNAPSHOTS=1 .venv/bin/pytest persona_hub_dagster_tests/test_definitions.py` and review the diff."
    )


def test_the_asset_keys_follow_the_house_conventions():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_text", "raw_text_rejects"} <= keys
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        node = defs.resolve_asset_graph().get(key)
        assert node.partitions_def is None or str(node.partitions_def) == 'Dynamic partitions: "text_shards"'


def test_dg_validates_the_project():
    dg_cli = Path(sys.executable).parent / "dg"
    result = subprocess.run(
        [str(dg_cli), "check", "defs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr

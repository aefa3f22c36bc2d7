"""eval/tools: every tool implementation run in the sandbox, check by check.

The static checks of the synthesis step run again (the code parses, defines the function with exactly the declared
parameters, imports only allowed modules); code that fails them is never run. Then a harness in the sandbox
executes the module (`imports`), finds the function (`has_function`) with the declared signature
(`signature_matches`), calls it with the spec's example arguments within the time limit (`returns`), and
serializes the value as JSON (`json_serializable`). `failed_check` names the first check that failed and `error`
says how.

Where programs cannot run (no usable sandbox and PERSONA_HUB_SANDBOX=auto, or `off`), a tool that passes the static
checks is *not run*: `not_run` says why, the execution checks and `passed` are null (neither passed nor failed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.evaluation.common import PROGRAMS_RAN, eval_lineage, finish, shard_items
from persona_hub_dagster.lib.evaluation.sandbox import ProgramExecution, SandboxLimits, program_execution, run_python
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import Stage, StageCall, StageResult, frame
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask
from persona_hub_dagster.lib.synthesis.tasks.tools import check_tool_code

CHECK_ORDER = ("static", "imports", "has_function", "signature_matches", "returns", "json_serializable")
CHECKS = {
    **{name: pl.Boolean for name in CHECK_ORDER},
    "failed_check": pl.String,  # the first check that failed (null when it passed)
    "error": pl.String,
    "result": pl.String,  # the call's value, as JSON (cut at 2,000 characters)
    "execution_seconds": pl.Float64,
    "sandbox": pl.String,  # what the tool ran behind: bwrap | weak (null: it did not run)
    "not_run": pl.String,  # why a tool that passed the static checks was not run (null: it ran, or failed them)
}
HARNESS_VERSION = "tool-harness.v1"
# Runs in the sandbox: markers on stdout say how far the tool got.
HARNESS = """
import inspect, json, sys
_namespace = {{"__name__": "tool"}}
exec(compile({source!r}, "tool.py", "exec"), _namespace)
print("@@imports", flush=True)
_function = _namespace.get({name!r})
if not callable(_function):
    sys.exit("no callable named " + {name!r})
print("@@has_function", flush=True)
_parameters = list(inspect.signature(_function).parameters.values())
_names = sorted(p.name for p in _parameters)
if _names != sorted({declared!r}) or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in _parameters):
    sys.exit("signature (" + ", ".join(str(p) for p in _parameters) + ") is not the declared one")
print("@@signature_matches", flush=True)
_value = _function(**json.loads({arguments!r}))
print("@@returns", flush=True)
try:
    _encoded = json.dumps(_value)
except (TypeError, ValueError) as exc:
    sys.exit("the value (" + type(_value).__name__ + ") is not JSON-serializable: " + str(exc))
print("@@json_serializable " + _encoded[:2000], flush=True)
"""


@dataclass(frozen=True)
class ToolsEvalSettings:
    timeout_s: float = setting(5.0, "Sandbox wall-clock limit per tool (import, signature and the example call).")
    memory_mb: int = setting(512, "Sandbox address-space limit per tool.")
    parallel: int | None = setting(None, "Tools run at once (each its own process); null: one per core.")

    @property
    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, cpu_s=max(1, int(self.timeout_s)), memory_mb=self.memory_mb)


def check_tool(
    row: Mapping[str, Any], limits: SandboxLimits, execution: ProgramExecution | None = None
) -> dict[str, Any]:
    """Every check of one tool row (name, parameters, example_arguments, code). `execution`: whether programs run
    here (decided by the sandbox mode when not given)."""
    execution = execution or program_execution()
    declared = list(json.loads(row["parameters"]).get("properties") or {})
    result: dict[str, Any] = {name: False for name in CHECK_ORDER}
    result.update(failed_check=None, error=None, result=None, execution_seconds=None, sandbox=None, not_run=None)
    problem = check_tool_code(row["code"], row["name"], declared)
    if problem:
        return {**result, "failed_check": "static", "error": problem}
    result["static"] = True
    if not execution.runs:
        return {**result, **{name: None for name in CHECK_ORDER[1:]}, "not_run": execution.not_run}
    result["sandbox"] = execution.boundary
    harness = HARNESS.format(
        source=row["code"], name=row["name"], declared=declared, arguments=row["example_arguments"]
    )
    run = run_python(harness, limits)
    result["execution_seconds"] = round(run.seconds, 4)
    reached = set()
    for line in run.stdout.splitlines():
        if line.startswith("@@"):
            marker, _, rest = line[2:].partition(" ")
            reached.add(marker)
            if marker == "json_serializable":
                result["result"] = rest
    for name in CHECK_ORDER[1:]:
        result[name] = name in reached
    failed = next((name for name in CHECK_ORDER if not result[name]), None)
    if failed:
        result["failed_check"] = failed
        result["error"] = run.failure or _last_line(run.stderr) or "stopped without an error message"
    return result


def _last_line(text: str) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


EVALUATION = tables.evaluation(
    "tools",
    "Each tool implementation run in the sandbox: the static checks again, then imports, has_function, "
    "signature_matches, returns (the spec's example call within the time limit) and json_serializable; "
    "`failed_check` and `error` say what went wrong. Plus each item's near-duplicate, persona-grounding and "
    "contamination columns.",
    rejects=False,  # no model is asked: nothing to reject
)


def stage(task: SynthesisTask) -> Stage:
    """eval/tools: the task's tools (name, parameters, example_arguments, code) run in the sandbox."""

    def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: ToolsEvalSettings) -> StageResult:
        items = shard_items(inputs, call, task)
        rows = items.to_dicts()
        execution = program_execution()
        with ThreadPoolExecutor(max_workers=settings.parallel or None) as pool:
            results = list(pool.map(lambda row: check_tool(row, settings.limits, execution), rows))
        checks = frame(
            [{"item_id": row["item_id"], **result} for row, result in zip(rows, results, strict=True)],
            {"item_id": pl.String, **CHECKS},
        ).with_columns(
            # A tool that was not run has neither passed nor failed.
            passed=pl.when(pl.col("not_run").is_null()).then(pl.all_horizontal(*CHECK_ORDER)) if rows else pl.lit(False)
        )
        stamp = {"model": "", "prompt_version": HARNESS_VERSION, "run_id": call.run_id}
        evaluated, metadata = finish(task, items, checks, call, check_columns=list(CHECK_ORDER), stamp=stamp)
        failed = evaluated["failed_check"].drop_nulls().value_counts()
        metadata["failed_check"] = dict(failed.iter_rows()) if failed.height else {}
        return StageResult({EVALUATION.table: evaluated}, metadata)

    return Stage(
        EVALUATION,
        op="evaluate_tools",
        settings=ToolsEvalSettings,
        run=run,
        prompts=lambda settings: [HARNESS_VERSION],
        samplings=lambda settings: [],
        version_extra=lambda settings: (HARNESS, settings.timeout_s, settings.memory_mb),
        reads=(task.table,),
        uses=(tables.PERSONA_HUB,),
        resources=("embeddings", "benchmarks"),
        lineage=eval_lineage(task),
        warnings=(PROGRAMS_RAN,),
    )

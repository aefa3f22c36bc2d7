"""Evaluating synthetic math problems by agreement of independent solutions (the paper kept 11.6k of 20k problems
where at least two of three solutions agreed).

Per problem: `reasoning_solutions` step-by-step solutions (each with its own seed) and `program_solutions` Python
programs whose printed result is the answer, run in the sandbox. Final answers are normalized (answers.py) and
grouped by equivalence; `agreement` is the size of the largest group, and a problem is verified when it reaches
`min_agreement`. Every solution is kept with its answer or what went wrong, and invalid model outputs are kept as
rejections, so a problem's verdict can always be traced to its solutions.

Where programs cannot run (no usable sandbox and PERSONA_HUB_SANDBOX=auto, or `off`), no program is asked for: the
problem is verified by its reasoning solutions alone, and every row says so (`not_run`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.estimate import Estimating, StageEstimate
from persona_hub_dagster.lib.evaluation import answers
from persona_hub_dagster.lib.evaluation.common import PROGRAMS_RAN, eval_lineage, finish, shard_items
from persona_hub_dagster.lib.evaluation.sandbox import ProgramExecution, SandboxLimits, program_execution, run_python
from persona_hub_dagster.lib.llm.client import LLMClient
from persona_hub_dagster.lib.llm.types import LLMResponse, SamplingParams
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.stage import (
    Planned,
    Provenance,
    RowsAndRejects,
    Stage,
    StageCall,
    StageResult,
    chat_request,
    frame,
    rate,
    rejects_frame,
    request_keys,
    run_requests,
)
from persona_hub_dagster.lib.synthesis.generate import TYPICAL_ANSWER_SHARE
from persona_hub_dagster.lib.synthesis.steps import SynthesisTask

REASONING_TEMPLATE = "math_solution"
PROGRAM_TEMPLATE = "math_program"

REASONING_SCHEMA = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 6000},
        "answer": {"type": "string", "minLength": 1, "maxLength": 200},
    },
    "required": ["reasoning", "answer"],
}
PROGRAM_SCHEMA = {
    "type": "object",
    "properties": {"program": {"type": "string", "minLength": 1, "maxLength": 6000}},
    "required": ["program"],
}

SOLUTIONS_SCHEMA = {
    "item_id": pl.String,
    "shard": pl.String,
    "solution_index": pl.Int32,
    "kind": pl.String,  # reasoning | program
    "output": pl.String,  # the reasoning, or the program's source
    "raw_answer": pl.String,  # the stated answer, or the program's last printed line
    "answer": pl.String,  # normalized
    "error": pl.String,  # why there is no answer: rejected output, program error, timeout
    "execution_seconds": pl.Float64,
    "model": pl.String,
    "prompt_version": pl.String,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class MathEvalSettings:
    reasoning_solutions: int = setting(2, "Step-by-step solutions per problem.")
    program_solutions: int = setting(1, "Python programs per problem, run in the sandbox; their output is the answer.")
    min_agreement: int = setting(2, "Agreeing answers a verified problem needs.")
    timeout_s: float = setting(5.0, "Sandbox wall-clock limit per program.")
    memory_mb: int = setting(512, "Sandbox address-space limit per program.")
    reasoning_max_tokens: int = setting(512, "Output tokens per step-by-step solution.")
    program_max_tokens: int = setting(384, "Output tokens per program.")
    parallel_programs: int | None = setting(None, "Programs run at once (each its own process); null: one per core.")

    def __post_init__(self) -> None:
        total = self.reasoning_solutions + self.program_solutions
        if total < 2:
            raise ValueError("Agreement needs at least two independent solutions")
        if not 1 <= self.min_agreement <= total:
            raise ValueError(f"min_agreement must be between 1 and {total}")

    @property
    def n_solutions(self) -> int:
        return self.reasoning_solutions + self.program_solutions

    @property
    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, cpu_s=max(1, int(self.timeout_s)), memory_mb=self.memory_mb)

    @property
    def reasoning_sampling(self) -> SamplingParams:
        return SamplingParams(temperature=0.7, max_tokens=self.reasoning_max_tokens)

    @property
    def program_sampling(self) -> SamplingParams:
        return SamplingParams(temperature=0.7, max_tokens=self.program_max_tokens)


@dataclass
class MathEvalOutput:
    rows: list[dict[str, Any]]
    solutions: list[dict[str, Any]]
    rejects: list[dict[str, Any]]


def prompt_version() -> str:
    return f"{prompts.load(REASONING_TEMPLATE).version},{prompts.load(PROGRAM_TEMPLATE).version}"


def plan(
    problems: pl.DataFrame, settings: MathEvalSettings, *, with_programs: bool = True
) -> tuple[list[Planned], list[Planned]]:
    """The solver requests: `reasoning_solutions` per problem, then `program_solutions` unless programs cannot run."""
    reasoning_prompt, program_prompt = prompts.load(REASONING_TEMPLATE), prompts.load(PROGRAM_TEMPLATE)
    reasoning, programs = [], []
    asked = settings.n_solutions if with_programs else settings.reasoning_solutions
    for item_id, problem in problems.select("item_id", "problem").iter_rows():
        shown = prompts.delimited("problem", problem)
        for index in range(asked):
            is_program = index >= settings.reasoning_solutions
            base = settings.program_sampling if is_program else settings.reasoning_sampling
            sampling = replace(base, seed=None if base.seed is None else base.seed + index)
            request = chat_request(
                program_prompt if is_program else reasoning_prompt,
                sampling=sampling,
                json_schema=PROGRAM_SCHEMA if is_program else REASONING_SCHEMA,
                request_id=f"{item_id}:{index}",
                problem=shown,
            )
            keys = {"item_id": item_id, "solution_index": index, "kind": "program" if is_program else "reasoning"}
            (programs if is_program else reasoning).append(Planned(item_id, request, keys))
    return reasoning, programs


def _parse_reasoning(item: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
    yield {"output": response.parsed["reasoning"], "raw_answer": response.parsed["answer"]}


def _parse_program(item: Planned, response: LLMResponse) -> Iterable[dict[str, Any]]:
    yield {"output": response.parsed["program"]}


def evaluate_math(
    problems: pl.DataFrame,
    client: LLMClient,
    settings: MathEvalSettings,
    *,
    shard: str,
    run_id: str,
    batch_size: int = 32,
    execution: ProgramExecution | None = None,
) -> MathEvalOutput:
    """`problems`: the shard's synthetic/math rows (item_id, persona_id, problem). `execution`: whether programs run
    here (decided by the sandbox mode when not given)."""
    execution = execution or program_execution()
    provenance = Provenance(tables.MATH_EVALUATION.name, shard, run_id, client.backend.model, prompt_version())
    reasoning, programs = plan(problems, settings, with_programs=execution.runs)
    n_solutions = settings.n_solutions if execution.runs else settings.reasoning_solutions
    solved = RowsAndRejects()
    solved.extend(run_requests(client, reasoning, _parse_reasoning, provenance, batch_size=batch_size))
    written = run_requests(client, programs, _parse_program, provenance, batch_size=batch_size)
    solved.rejects.extend(written.rejects)
    solved.rows.extend(_execute(written.rows, settings))
    asked_programs = settings.program_solutions > 0

    solutions: dict[tuple[str, int], dict[str, Any]] = {}
    normalized: dict[tuple[str, int], answers.Answer] = {}
    for row in solved.rows:
        key = (row["item_id"], row["solution_index"])
        normalized[key] = answers.normalize(None if row.get("error") else row.get("raw_answer"))
        solutions[key] = {"error": None, "execution_seconds": None, **row, "answer": normalized[key].text or None}
    for reject in solved.rejects:  # an invalid output is a solution without an answer
        keys = _request_keys(reject)
        solutions[(keys["item_id"], keys["solution_index"])] = {
            **keys,
            **provenance.stamp(),
            "output": reject["raw_output"],
            "raw_answer": None,
            "answer": None,
            "error": f"rejected: {reject['reason']}",
            "execution_seconds": None,
        }

    unanswered = answers.normalize(None)
    rows = []
    for item_id, persona, problem in problems.select("item_id", "persona_id", "problem").iter_rows():
        mine = [normalized.get((item_id, i), unanswered) for i in range(n_solutions)]
        agreement, majority = answers.agreement(mine)
        rows.append(
            {
                "item_id": item_id,
                "persona_id": persona,
                "problem": problem,
                "n_solutions": n_solutions,
                "n_answered": sum(1 for a in mine if not a.empty),
                "agreement": agreement,
                "answer": majority.text if majority is not None else None,
                "answers": [a.text for a in mine],
                "verified": agreement >= settings.min_agreement,
                "sandbox": execution.boundary if asked_programs else None,
                "not_run": execution.not_run if asked_programs else None,
                **provenance.stamp(),
            }
        )
    return MathEvalOutput(rows=rows, solutions=list(solutions.values()), rejects=solved.rejects)


def _execute(programs: list[dict[str, Any]], settings: MathEvalSettings) -> list[dict[str, Any]]:
    """Run every program in the sandbox (several at once: each is a separate process with its own limits)."""

    def run_one(row: dict[str, Any]) -> dict[str, Any]:
        result = run_python(row["output"], settings.limits)
        raw = answers.last_number_line(result.stdout) if result.ok else None
        error = result.failure or (None if raw else "no_output: the program printed nothing")
        return {**row, "raw_answer": raw, "error": error, "execution_seconds": round(result.seconds, 4)}

    with ThreadPoolExecutor(max_workers=settings.parallel_programs or os.cpu_count() or 2) as pool:
        return list(pool.map(run_one, programs))


def _request_keys(reject: dict[str, Any]) -> dict[str, Any]:
    keys = request_keys(reject)
    return {"item_id": keys["item_id"], "solution_index": int(keys["solution_index"]), "kind": keys["kind"]}


CHECKS = {
    "problem": pl.String,
    "n_solutions": pl.Int32,  # solutions asked for
    "n_answered": pl.Int32,  # of them, those that produced a final answer
    "agreement": pl.Int32,  # size of the largest group of equivalent answers
    "answer": pl.String,  # that group's answer (normalized), null when nothing was answered
    "answers": pl.List(pl.String),  # every solution's normalized answer ("" when it had none), in solution order
    "verified": pl.Boolean,  # agreement >= min_agreement: the shard's verified set
    "sandbox": pl.String,  # what the program solutions ran behind: bwrap | weak (null: none ran)
    "not_run": pl.String,  # why the program solutions were not asked for and run (null: they were)
}


def stage(task: SynthesisTask) -> Stage:
    """eval/math: the task's problems (its `problem` column) solved and checked for agreement."""

    def run(inputs: Mapping[tables.Table, pl.LazyFrame], call: StageCall, settings: MathEvalSettings) -> StageResult:
        items = shard_items(inputs, call, task)
        output = evaluate_math(
            items.select("item_id", "persona_id", "problem"),
            call.client,
            settings,
            shard=call.shard,
            run_id=call.run_id,
            batch_size=call.batch_size,
        )
        checks = frame(output.rows, {"item_id": pl.String, **CHECKS}).with_columns(passed=pl.col("verified"))
        stamp = {"model": call.client.backend.model, "prompt_version": prompt_version(), "run_id": call.run_id}
        rows, metadata = finish(task, items, checks, call, check_columns=["verified"], stamp=stamp)
        solutions = frame(output.solutions, SOLUTIONS_SCHEMA).sort("item_id", "solution_index")
        programs = solutions.filter(pl.col("kind") == "program")
        usage = call.client.usage
        return StageResult(
            {
                tables.EVAL_MATH: rows,
                tables.MATH_EVALUATION.rejects: rejects_frame(output.rejects),
                tables.EVAL_MATH_SOLUTIONS: solutions,
            },
            {
                **metadata,
                "agreement_rate": metadata["pass_rate"],
                "rejection_rate": rate(len(output.rejects), int(rows["n_solutions"].sum()) if rows.height else 0),
                "program_failure_rate": rate(programs["error"].is_not_null().sum(), programs.height),
                "token_cost": usage.prompt_tokens + usage.completion_tokens,
            },
        )

    def estimate(settings: MathEvalSettings, shard: Estimating) -> StageEstimate:
        """Every solution of every problem: programs only where they can run (else no program is asked for)."""
        asked = settings.n_solutions if shard.programs_run() else settings.reasoning_solutions
        items, calls, prompt = shard.items(task.table.name, asked, template=REASONING_TEMPLATE)
        reasoning, programs = settings.reasoning_solutions, asked - settings.reasoning_solutions
        longest = reasoning * settings.reasoning_max_tokens + programs * settings.program_max_tokens
        return shard.cost(
            tables.EVAL_MATH.name,
            calls,
            prompt=prompt,
            completion=TYPICAL_ANSWER_SHARE * longest / asked,
            max_tokens=None,
            rows={tables.EVAL_MATH.name: items},
        )

    return Stage(
        tables.MATH_EVALUATION,
        op="evaluate_math",
        settings=MathEvalSettings,
        run=run,
        prompts=lambda settings: prompt_version().split(","),
        samplings=lambda settings: [settings.reasoning_sampling, settings.program_sampling],
        reads=(task.table,),
        estimate=estimate,
        uses=(tables.PERSONA_HUB,),
        resources=("llm", "embeddings", "benchmarks"),
        lineage=eval_lineage(task),
        warnings=(PROGRAMS_RAN,),
    )

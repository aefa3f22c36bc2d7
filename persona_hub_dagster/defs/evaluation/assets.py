"""eval/math: every synthetic math problem solved independently several times; verified where solutions agree."""

from dataclasses import replace

import dagster as dg
import polars as pl
from pydantic import Field

from persona_hub_dagster.defs.models import LLMResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.stages import rate, stage_code_version, stage_specs, write_stage_tables
from persona_hub_dagster.defs.storage import DeltaStorageResource
from persona_hub_dagster.defs.synthesis.assets import synthetic_key
from persona_hub_dagster.lib.evaluation import math_eval
from persona_hub_dagster.lib.evaluation.math_eval import EVAL_MATH_SCHEMA, SOLUTIONS_SCHEMA, MathEvalSettings
from persona_hub_dagster.lib.generation import frame as rows_frame
from persona_hub_dagster.lib.generation import rejects_frame

EVAL_MATH = dg.AssetKey(["eval", "math"])
EVAL_MATH_SOLUTIONS = dg.AssetKey(["eval", "math_solutions"])
EVAL_MATH_REJECTS = dg.AssetKey(["eval", "math_rejects"])

_DEFAULTS = MathEvalSettings()


class MathEvalConfig(dg.Config):
    reasoning_solutions: int = Field(default=_DEFAULTS.reasoning_solutions, description="Step-by-step solutions.")
    program_solutions: int = Field(
        default=_DEFAULTS.program_solutions,
        description="Python programs run in the sandbox; their output is the answer.",
    )
    min_agreement: int = Field(
        default=_DEFAULTS.min_agreement, description="Agreeing answers a verified problem needs."
    )
    timeout_s: float = Field(default=_DEFAULTS.limits.timeout_s, description="Sandbox wall-clock limit per program.")
    memory_mb: int = Field(default=_DEFAULTS.limits.memory_mb, description="Sandbox address-space limit per program.")
    reasoning_max_tokens: int = Field(default=_DEFAULTS.reasoning_sampling.max_tokens)
    program_max_tokens: int = Field(default=_DEFAULTS.program_sampling.max_tokens)
    batch_size: int = Field(default=32, description="Requests per backend call and per response-cache commit.")

    def settings(self) -> MathEvalSettings:
        return MathEvalSettings(
            reasoning_solutions=self.reasoning_solutions,
            program_solutions=self.program_solutions,
            min_agreement=self.min_agreement,
            limits=replace(
                _DEFAULTS.limits,
                timeout_s=self.timeout_s,
                cpu_s=max(1, int(self.timeout_s)),
                memory_mb=self.memory_mb,
            ),
            reasoning_sampling=replace(_DEFAULTS.reasoning_sampling, max_tokens=self.reasoning_max_tokens),
            program_sampling=replace(_DEFAULTS.program_sampling, max_tokens=self.program_max_tokens),
        )


_VERSION = stage_code_version(
    math_eval.prompt_version().split(","), [_DEFAULTS.reasoning_sampling, _DEFAULTS.program_sampling]
)


def _with_python_kind(specs: list[dg.AssetSpec]) -> list[dg.AssetSpec]:
    """eval/math also runs Python (the sandboxed programs): say so on its main table."""
    return [specs[0].merge_attributes(kinds={"python"}), *specs[1:]]


@dg.multi_asset(
    name="evaluate_math",
    specs=_with_python_kind(
        stage_specs(
            {
                EVAL_MATH: (
                    "Each synthetic math problem solved independently (step-by-step solutions and a Python program "
                    "run in a sandbox); answers normalized and compared. `agreement` is the largest group of equal "
                    "answers; `verified` rows (agreement >= min_agreement) are the shard's verified set."
                ),
                EVAL_MATH_SOLUTIONS: "Every solution: the reasoning or program, the stated/printed answer, its "
                "normalized form, and what went wrong when there is no answer (rejected output, program error, "
                "timeout).",
                EVAL_MATH_REJECTS: "Solver outputs that were not valid JSON for their schema, verbatim, with the "
                "reason.",
            },
            deps=[synthetic_key("math")],
            group="evaluation",
            code_version=_VERSION,
        )
    ),
    partitions_def=text_shards,
    can_subset=False,
)
def evaluate_math(
    context: dg.AssetExecutionContext, config: MathEvalConfig, storage: DeltaStorageResource, llm: LLMResource
):
    shard, store = context.partition_key, storage.store()
    problems = store.scan(synthetic_key("math").path, [shard]).select("item_id", "persona_id", "problem").collect()
    settings = config.settings()
    client = llm.client(store, stage="eval-math", shard=shard, run_id=context.run.run_id)
    output = math_eval.evaluate_math(
        problems, client, settings, shard=shard, run_id=context.run.run_id, batch_size=config.batch_size
    )
    rows = rows_frame(output.rows, EVAL_MATH_SCHEMA)
    solutions = rows_frame(output.solutions, SOLUTIONS_SCHEMA).sort("item_id", "solution_index")
    verified = int(rows["verified"].sum()) if rows.height else 0
    programs = solutions.filter(pl.col("kind") == "program")
    context.log.info(f"eval/math {shard}: {verified} of {rows.height} problems verified")
    yield from write_stage_tables(
        context,
        store,
        shard,
        {EVAL_MATH: rows, EVAL_MATH_SOLUTIONS: solutions, EVAL_MATH_REJECTS: rejects_frame(output.rejects)},
        usage=client.usage,
        metadata={
            EVAL_MATH: {
                "problems": dg.MetadataValue.int(rows.height),
                "verified": dg.MetadataValue.int(verified),
                "agreement_rate": rate(verified, rows.height),
                "rejection_rate": rate(len(output.rejects), settings.n_solutions * rows.height),
                "program_failure_rate": rate(programs["error"].is_not_null().sum(), programs.height),
                "token_cost": dg.MetadataValue.int(client.usage.prompt_tokens + client.usage.completion_tokens),
            }
        },
    )

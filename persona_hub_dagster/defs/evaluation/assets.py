"""eval/math: every synthetic math problem solved independently several times; verified where solutions agree."""

from persona_hub_dagster.defs.stages import llm_stage_asset
from persona_hub_dagster.lib.evaluation import math_eval

# eval/math also runs Python (the sandboxed programs): its main table says so.
evaluate_math = llm_stage_asset(math_eval.STAGE, group="evaluation", kinds=["python"])

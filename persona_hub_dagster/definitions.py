"""The code location: everything under defs/, loaded by dg's folder convention."""

import warnings
from pathlib import Path

import dagster as dg

from persona_hub_dagster.defs.stages import check_stage_overrides

# process_text_shard mixes the hub's single-run backfill policy with the per-shard stages'. A run of the job is one
# shard, where the policies agree; Dagster still warns whenever the job is resolved, which only adds noise to every
# command. (Set here: a filter set inside defs/ is lost when dg finishes loading the folder.)
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies")

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
check_stage_overrides()

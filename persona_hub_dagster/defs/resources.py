"""Resources and the executor for every asset, configured from the environment (see docs/reference/settings.md)."""

import os

import dagster as dg
from pydantic import Field

from persona_hub_dagster.defs.models import EmbeddingsResource, JudgeResource, LLMResource
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib.evaluation.contamination import Benchmark, benchmark_from_spec, configured_benchmarks
from persona_hub_dagster.lib.locations import PERSONAS_FOLDER_ENV, default_source_location
from persona_hub_dagster.lib.shard_files import DEFAULT_PERSONAS_FOLDER


class ShardSourceResource(dg.ConfigurableResource):
    """The folder or object-store prefix the shard sensor watches for new text files and persona files."""

    location: str = Field(
        default_factory=default_source_location,
        description="Default $PERSONA_HUB_SOURCE, else corpus/ in the project folder.",
    )
    personas_folder: str | None = Field(
        default_factory=lambda: os.environ.get(PERSONAS_FOLDER_ENV, DEFAULT_PERSONAS_FOLDER) or None,
        description="Files under this sub-folder of the location are ready-made personas (one per record, field "
        "`persona`), not text. Default $PERSONA_HUB_PERSONAS_FOLDER, else personas/; empty: no persona folder.",
    )


class BenchmarksResource(dg.ConfigurableResource):
    """Benchmark test sets the evaluation checks synthetic items against (contamination). With none configured, the
    evaluation says "not checked", never "clean"."""

    files: list[str] = Field(
        default_factory=configured_benchmarks,
        description="NAME=PATH[#FIELD] per benchmark (JSONL, Parquet or CSV; local or s3://; field default `text`), "
        "e.g. gsm8k=/data/gsm8k_test.jsonl#question. Default: $PERSONA_HUB_BENCHMARKS (comma-separated).",
    )

    def load(self) -> list[Benchmark]:
        return [benchmark_from_spec(spec) for spec in self.files]


@dg.definitions
def resources() -> dg.Definitions:
    storage = DeltaStorageResource()
    return dg.Definitions(
        resources={
            "storage": storage,
            "io_manager": DeltaIOManager(storage=storage),
            "shard_source": ShardSourceResource(),
            "llm": LLMResource(),
            "judge": JudgeResource(),
            "embeddings": EmbeddingsResource(),
            "benchmarks": BenchmarksResource(),
        },
        # One shard's steps run in one process: on a small machine the multiprocess executor costs seconds per
        # step, and parallelism comes from running shards as separate runs (docs/reference/settings.md).
        executor=dg.in_process_executor,
    )

"""Bring your own personas at laptop scale: a user's file of 200k personas through raw_text, text_personas (given,
no LLM call) and the hub, each in a fresh process so peak RSS is the step's own.

    .venv/bin/python bench/persona_import.py                  # 200k personas, JSONL and Parquet, hub with model2vec
    .venv/bin/python bench/persona_import.py --personas 20000 --formats jsonl   # a quick run

Baseline (same session, same file): `pl.read_ndjson` / `pl.read_parquet` of the whole file plus one Delta write of
it: the least any importer must do, holding the file in memory at once. Ours streams the file in batches, keeps every
bad record with its reason and hashes each persona.

The hub runs with `EmbeddingsResource(fast=True)` (model2vec, distilled from MiniLM) by default: MiniLM on 200k
personas is ~18 minutes on 2 cores (bench/dedup.py measures it), a GPU job, not a memory question. --minilm uses it.
"""

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from persona_corpus import persona_corpus  # noqa: E402

SHARD = "byo-personas"


def write_file(path: Path, n: int, file_format: str) -> int:
    import polars as pl

    personas, _ = persona_corpus(n, duplicate_share=0.1)
    frame = pl.DataFrame(
        {
            "id": [f"user-{i}" for i in range(n)],
            "persona": personas,
            "source": ["crowd-survey-2026"] * n,
            "age_band": [["18-29", "30-44", "45-64", "65+"][i % 4] for i in range(n)],
        }
    )
    if file_format == "jsonl":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)
    return path.stat().st_size


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline(path: str, root: str, file_format: str) -> dict:
    import polars as pl

    from persona_hub_dagster.lib.storage import DeltaStore

    started = time.perf_counter()
    frame = pl.read_ndjson(path) if file_format == "jsonl" else pl.read_parquet(path)
    DeltaStore(root=root).write_partitions(("baseline",), frame.with_columns(shard=pl.lit(SHARD)), partitions=[SHARD])
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "rows": frame.height}


def materialize(path: str, root: str, file_format: str, selection: str, minilm: bool) -> dict:
    """raw_text + text_personas (selection 'import') or the hub over them ('hub'), in-process as Dagster runs it."""
    import dagster as dg

    from persona_hub_dagster.defs.hub.assets import build_persona_hub
    from persona_hub_dagster.defs.models import EmbeddingsResource, LLMResource
    from persona_hub_dagster.defs.partitions import text_shards
    from persona_hub_dagster.defs.personas.assets import persona_to_persona_asset, text_to_persona_asset
    from persona_hub_dagster.defs.raw_text.assets import ingest_raw_text
    from persona_hub_dagster.defs.stages import asset_key
    from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
    from persona_hub_dagster.lib import filesystems, tables
    from persona_hub_dagster.lib.shard_files import shard_file
    from persona_hub_dagster.lib.shards import ShardRegistry
    from persona_hub_dagster.lib.storage import DeltaStore

    store = DeltaStore(root=root)
    registry = ShardRegistry(store)
    if selection == "import":
        registry.register([shard_file(filesystems.stat(path), key=SHARD, kind="personas")], registered_by="bench")
        selected = [*tables.INGESTION.tables, *tables.TEXT_TO_PERSONA.tables]
    else:
        selected = [*tables.PERSONA_TO_PERSONA.tables, *tables.HUB.tables]
    storage = DeltaStorageResource(root=root)
    started = time.perf_counter()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(text_shards.name, [SHARD])
        result = dg.materialize(
            [ingest_raw_text, text_to_persona_asset, persona_to_persona_asset, build_persona_hub],
            partition_key=SHARD,
            instance=instance,
            resources={
                "storage": storage,
                "io_manager": DeltaIOManager(storage=storage),
                "llm": LLMResource(),
                "embeddings": EmbeddingsResource(fast=not minilm),
            },
            selection=[asset_key(t) for t in selected],
        )
    seconds = time.perf_counter() - started
    assert result.success
    counts = {
        t.name: store.row_count(t, [SHARD]) for t in (tables.RAW_TEXT, tables.RAW_TEXT_REJECTS, tables.TEXT_PERSONAS)
    }
    if selection == "hub":
        counts = {tables.PERSONA_HUB.name: store.row_count(tables.PERSONA_HUB, [SHARD])}
    llm = store.exists(tables.LLM_RESPONSES) and store.row_count(tables.LLM_RESPONSES) > 0
    return {"seconds": seconds, "peak_mb": peak_mb(), "counts": counts, "llm_responses_cached": llm}


def fresh(target, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(target, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--personas", type=int, default=200_000)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"])
    parser.add_argument("--minilm", action="store_true", help="the hub with MiniLM instead of model2vec")
    args = parser.parse_args()
    print(f"{date.today()} {platform.machine()} {mp.cpu_count()} cores, {args.personas} personas")
    for file_format in args.formats:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"personas.{file_format}"
            size = write_file(path, args.personas, file_format)
            base = fresh(baseline, str(path), str(Path(tmp) / "baseline"), file_format)
            ours = fresh(materialize, str(path), str(Path(tmp) / "delta"), file_format, "import", args.minilm)
            hub = fresh(materialize, str(path), str(Path(tmp) / "delta"), file_format, "hub", args.minilm)
            print(
                json.dumps(
                    {
                        "format": file_format,
                        "file_mb": round(size / 2**20, 1),
                        "baseline": {k: round(v, 1) for k, v in base.items()},
                        "import": ours,
                        "hub": hub,
                        "import_vs_baseline": {
                            "time": round(ours["seconds"] / base["seconds"], 2),
                            "peak_rss": round(ours["peak_mb"] / base["peak_mb"], 2),
                        },
                    },
                    default=str,
                )
            )


if __name__ == "__main__":
    main()

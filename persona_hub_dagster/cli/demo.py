"""`persona-hub demo`: register the bundled sample corpus, process it with demo-sized settings, and print what it
made (the tables, one item per task, the evaluation's totals, one traced example)."""

import json
import time
from importlib import resources

from persona_hub_dagster.cli.instance import register
from persona_hub_dagster.cli.running import DEFAULT_JOB, DEMONSTRATIONS_JOB, materialize, run_job
from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.lineage import print_traced_example
from persona_hub_dagster.lib.settings import read_stage_settings
from persona_hub_dagster.lib.shard_files import shard_file
from persona_hub_dagster.lib.storage import DeltaStore

SAMPLE_SHARD = "sample"
# Demo-sized settings (every stage and task, on a sample, in minutes on the embedded model): the file a deployment can
# also name in PERSONA_HUB_STAGE_SETTINGS.
DEMO_SETTINGS = resources.files("persona_hub_dagster") / "data" / "demo_settings.yaml"


def cmd_demo(args) -> int:
    sample = resources.files("persona_hub_dagster") / "data" / "sample_corpus.jsonl"
    shard = shard_file(filesystems.stat(str(sample)), key=SAMPLE_SHARD)
    # replace=True: the demo stays runnable after the checkout moves, which changes the sample's path.
    register(shard, replace=True)
    started = time.perf_counter()
    # persona_few_shot shows each demonstration's derived persona: derive them first (once; cached afterwards).
    demonstrations = "derive_demonstration_personas"
    status = run_job(
        DEMONSTRATIONS_JOB,
        ops_config=None if args.full else _demo_ops_config(demonstrations),
        verbose=args.verbose,
    )
    status = status or materialize(
        [SAMPLE_SHARD],
        DEFAULT_JOB,
        ops_config=None if args.full else _demo_ops_config(exclude=(demonstrations,)),
        verbose=args.verbose,
    )
    print(f"  ({time.perf_counter() - started:.0f} s)")
    _print_tables(SAMPLE_SHARD)
    if status == 0:
        _print_task_examples(DeltaStore(), SAMPLE_SHARD)
        _print_report(DeltaStore())
        print_traced_example(DeltaStore(), SAMPLE_SHARD)
    print(
        "\nOpen the UI with `make dev` (or `.venv/bin/persona-hub ui`), then http://127.0.0.1:3000 "
        f"-> Assets: every table above is an asset; partition '{SAMPLE_SHARD}' is the sample shard."
    )
    return status


def _demo_ops_config(*ops: str, exclude: tuple[str, ...] = ()) -> dict:
    settings = read_stage_settings(str(DEMO_SETTINGS))
    chosen = ops or [op for op in settings if op not in exclude]
    return {op: {"config": settings[op]} for op in chosen}


def _print_tables(shard: str) -> None:
    from persona_hub_dagster.definitions import defs

    store = DeltaStore()
    print(f"\nDelta tables under {store.root} (shard {shard!r}):")
    print(f"  {'asset':<32} {'rows in shard':>13} {'rows in table':>13}  location")
    for key in sorted(defs.resolve_all_asset_keys(), key=lambda k: k.to_user_string()):
        if not store.exists(key.path):
            print(f"  {key.to_user_string():<32} {'-':>13} {'-':>13}  (not materialized)")
            continue
        shard_rows, table_rows = store.row_count(key.path, [shard]), store.row_count(key.path)
        print(f"  {key.to_user_string():<32} {shard_rows:>13} {table_rows:>13}  {store.table_uri(key.path)}")


def _print_task_examples(store: DeltaStore, shard: str, width: int = 110) -> None:
    """One item per synthesis task (or, when the model produced none, why its outputs were rejected and what would
    help)."""
    from persona_hub_dagster.lib.stage import empty_table_explanation
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    print(f"\nOne example per synthesis task (shard {shard!r}):")
    for task in TASKS.values():
        written = task.writes
        if not store.exists(written.table):
            continue
        rows = store.scan(written.table, [shard]).sort("item_id").head(1).collect()
        rejects = None
        if store.exists(written.rejects):
            rejects = store.scan(written.rejects, [shard]).select("reason").collect()
        rejected = rejects.height if rejects is not None else 0
        counts = f"{store.row_count(written.table, [shard])} items, {rejected} rejected"
        if rows.is_empty():
            why = empty_table_explanation(rejects["reason"].to_list() if rejected else [])
            print(f"  {written.name:<24} ({counts}) no item: {why}")
            continue
        row = rows.row(0, named=True)
        fields = {name: row[name] for name in task.columns}
        text = " ".join(json.dumps(fields, ensure_ascii=False, default=str).split())
        shown = text[:width] + (" ..." if len(text) > width else "")
        print(f"  {written.name:<24} ({counts}, {row['prompting']}) {shown}")


def _print_report(store: DeltaStore) -> None:
    """The evaluation's totals per task (eval/report), and where its HTML version is."""
    import polars as pl

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.evaluation.report import ALL_SHARDS, programs_note, report_location

    if not store.exists(tables.EVAL_REPORT):
        return
    totals = store.read(tables.EVAL_REPORT).filter(pl.col("shard") == ALL_SHARDS)
    print("\nEvaluation (eval/report, all shards):")
    print(
        f"  {'task':<14} {'items':>5} {'passed':>6} {'not run':>7}  {'near-dup':>8}  {'distinct-2':>10}  {'lift':>5}  "
        "contamination"
    )
    for row in totals.iter_rows(named=True):
        lift = "-" if row["persona_lift"] is None else f"{row['persona_lift']:.2f}"
        print(
            f"  {row['task']:<14} {row['items']:>5} {row['pass_rate']:>6.0%} {row['not_run']:>7}  "
            f"{row['near_duplicates']:>8}  "
            f"{row['distinct_2']:>10.2f}  {lift:>5}  {row['contamination']}"
        )
    if note := programs_note(totals):
        print(f"  note: {note.replace('**', '')}")
    print(f"  HTML report: {report_location(store)}")

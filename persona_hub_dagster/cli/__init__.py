"""persona-hub: register shards, materialize them, review prompts, run the demo and open the UI.

Every command works on the same Dagster instance (DAGSTER_HOME) and storage root as the UI, so what it does shows
up there: registered shards as partitions, materializations as runs.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from importlib import resources
from pathlib import Path

from persona_hub_dagster.lib import filesystems, release
from persona_hub_dagster.lib.lineage import print_traced_example
from persona_hub_dagster.lib.locations import normalize_location, project_dir
from persona_hub_dagster.lib.settings import STAGE_SETTINGS_ENV, read_stage_settings
from persona_hub_dagster.lib.shards import (
    DEFAULT_PERSONA_COLUMN,
    KINDS,
    InvalidShard,
    ShardConflict,
    ShardRegistry,
    alike_registered,
    content_digest,
    shard_file,
)
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis.generate import EXAMPLE_PERSONA
from persona_hub_dagster.lib.synthesis.steps import PROMPTING_MODES

# The task names, for the command line (importing the registry itself waits until a command needs it).
TASK_NAMES = ("math", "reasoning", "instructions", "conversations", "knowledge", "npc", "tools")

SAMPLE_SHARD = "sample"
DEFAULT_JOB = "process_text_shard"
DEMONSTRATIONS_JOB = "prepare_demonstrations"
# Demo-sized settings (every stage and task, on a sample, in minutes on the embedded model): the file a deployment can
# also name in PERSONA_HUB_STAGE_SETTINGS.
DEMO_SETTINGS = resources.files("persona_hub_dagster") / "data" / "demo_settings.yaml"


def _demo_ops_config(*ops: str, exclude: tuple[str, ...] = ()) -> dict:
    settings = read_stage_settings(str(DEMO_SETTINGS))
    chosen = ops or [op for op in settings if op not in exclude]
    return {op: {"config": settings[op]} for op in chosen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona-hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="full stack traces when something fails")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register-shard", help="register a file (local path or s3:// URI) as a shard")
    register.add_argument("path")
    register.add_argument("--key", help="shard key (default: derived from the file name)")
    register.add_argument("--format", choices=["jsonl", "parquet", "csv", "txt"], help="default: from the suffix")
    register.add_argument("--text-column", help="field/column holding the text (default: the asset config's, 'text')")
    register.add_argument(
        "--kind",
        choices=KINDS,
        default="text",
        help="text (default): web text for Text-to-Persona; personas: one ready-made persona per record",
    )
    register.add_argument(
        "--persona-column", help=f"with --kind personas: the persona's field (default {DEFAULT_PERSONA_COLUMN!r})"
    )
    register.add_argument("--replace", action="store_true", help="point an existing key at this file")
    register.add_argument("--materialize", action="store_true", help=f"then run {DEFAULT_JOB} for it")

    materialize = commands.add_parser("materialize", help="run a job for registered shards, in this process")
    materialize.add_argument("shards", nargs="+")
    materialize.add_argument("--job", default=DEFAULT_JOB, help=f"default {DEFAULT_JOB}: every stage of the shard")
    add_run_settings_arguments(materialize)

    estimate = commands.add_parser(
        "estimate", help="before a run: per stage, the LLM calls, tokens, time and money it would take"
    )
    estimate.add_argument("shards", nargs="+")
    estimate.add_argument("--job", default=DEFAULT_JOB, help=f"default {DEFAULT_JOB}: every stage of the shard")
    add_run_settings_arguments(estimate)
    estimate.add_argument("--price", type=float, metavar="USD", help="price per million tokens (prompt + completion)")
    estimate.add_argument("--json", action="store_true", help="one JSON line per shard and stage instead of tables")
    estimate.add_argument(
        "--latency",
        type=float,
        default=DEFAULT_SERVED_LATENCY_S,
        metavar="S",
        help=f"a served model: seconds per call, max_in_flight calls at a time (default {DEFAULT_SERVED_LATENCY_S})",
    )

    commands.add_parser("shards", help="list the registered shards")

    unregister = commands.add_parser(
        "unregister-shard", help="delete a shard's rows from every table, its registry entry and its partition"
    )
    unregister.add_argument("key")
    unregister.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    prompt = commands.add_parser("prompt", help="print a task's fully rendered prompts for review")
    prompt.add_argument("task", choices=sorted(TASK_NAMES))
    prompt.add_argument("--mode", choices=PROMPTING_MODES, default="zero_shot", help="prompting mode (zero_shot)")
    prompt.add_argument("--persona", default=EXAMPLE_PERSONA, help="the persona to render with")
    prompt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="another setting of the task, e.g. --set focus=geometry, --set turns=2",
    )

    contaminated = commands.add_parser(
        "contamination", help="flag items of a file that reproduce benchmark records (13-grams, embedding neighbours)"
    )
    contaminated.add_argument("items", help="JSONL, Parquet or CSV file of items (local or s3://)")
    contaminated.add_argument(
        "--benchmark",
        action="append",
        required=True,
        metavar="BENCH",
        help="a benchmark file (repeatable); [NAME=]PATH, the name defaults to the file's stem",
    )
    contaminated.add_argument("--items-field", default="text", help="the items' text field (text)")
    contaminated.add_argument("--benchmark-field", default="text", help="the benchmarks' text field (text)")
    contaminated.add_argument(
        "--embeddings",
        choices=["minilm", "fast", "none"],
        default="minilm",
        help="embedding neighbours with MiniLM (default), its fast static distillation, or none",
    )
    contaminated.add_argument(
        "--threshold", type=float, default=None, help="embedding cosine that flags (default 0.9; the fast model's own)"
    )

    trace = commands.add_parser("trace", help="follow an item, persona or text id back to its source text and record")
    trace.add_argument("id", help="an item_id, persona_id or text_id")
    trace.add_argument("--json", action="store_true", help="the chain as JSON")

    export = commands.add_parser(
        "export", help="write a task's training-ready release (HF datasets layout) to a folder"
    )
    export.add_argument("task", choices=sorted(TASK_NAMES))
    export.add_argument(
        "--out",
        required=True,
        help="folder (or s3:// prefix) to write: new, empty, or holding a release exported before (replaced)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="also when --out holds something else: moved aside to OUT.replaced-TIME, not deleted "
        "(never the storage root)",
    )
    export.add_argument(
        "--format",
        choices=["parquet", "jsonl", "chat"],
        action="append",
        help="parquet (HF datasets layout, default), jsonl (rows), chat (messages); repeatable",
    )
    export.add_argument("--test-fraction", type=float, default=None, help="share of items in the test split (0.1)")
    export.add_argument("--push", metavar="REPO_ID", help="then upload the folder to this Hugging Face dataset repo")

    demonstrations = commands.add_parser(
        "demonstrations", help="derive the personas of the demonstration pools (what persona_few_shot shows)"
    )
    demonstrations.add_argument("--tasks", help="comma-separated tasks (default: every task)")
    demo = commands.add_parser("demo", help=f"register the bundled sample corpus as shard '{SAMPLE_SHARD}', process it")
    demo.add_argument("--full", action="store_true", help="the asset defaults instead of demo-sized settings (hours)")

    ui = commands.add_parser("ui", help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)

    args = parser.parse_args(argv)
    VERBOSE["on"] = args.verbose
    ensure_dagster_home()
    try:
        return COMMANDS[args.command](args)
    except (InvalidShard, ShardConflict, release.ExportError, FileNotFoundError, LookupError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------ commands


def cmd_register_shard(args) -> int:
    location = normalize_location(args.path)
    entry = filesystems.stat(location)
    if args.persona_column and args.kind != "personas":
        raise ValueError("--persona-column is for persona shards: add --kind personas")
    if args.persona_column and args.text_column:
        raise ValueError("give --persona-column or --text-column, not both")
    shard = shard_file(entry, key=args.key, file_format=args.format, kind=args.kind)
    # The digest lets the sensor recognize the file when it is renamed or moved; a copy of a registered shard (or
    # a registered file under another key) is registered only when a key is given: deliberately.
    shard = dataclasses.replace(shard, content_digest=content_digest(shard.uri))
    alike = alike_registered(ShardRegistry(DeltaStore()).frame(), shard)
    if alike and not args.key:
        raise ShardConflict(f"{alike[0]}; to register it as another shard anyway, give it a key: --key NEW")
    new = _register(shard, text_column=args.persona_column or args.text_column, replace=args.replace)
    kind = ", ready-made personas" if shard.kind == "personas" else ""
    print(f"{'registered' if new else 'updated'} shard {shard.key!r} -> {shard.uri} ({shard.format}{kind})")
    for line in alike:
        print(f"note: {line}; registered as shard {shard.key!r} too, as asked")
    if args.materialize:
        return _materialize([shard.key], DEFAULT_JOB)
    print(f"materialize it with `persona-hub materialize {shard.key}`, or in the UI (raw_text, partition {shard.key})")
    return 0


def cmd_materialize(args) -> int:
    ops = run_settings(args)
    if args.sample is not None:
        print(f"a sample: {args.sample} texts of each shard go through every stage (text_to_persona.max_texts)")
    _warn_if_long(args.shards, args.job, ops)
    return _materialize(args.shards, args.job, {op: {"config": values} for op, values in ops.items()} or None)


def cmd_estimate(args) -> int:
    from persona_hub_dagster.lib import estimate

    ops = run_settings(args)
    speed = _backend_speed(args.latency)
    if args.json:
        for shard in args.shards:
            for stage in _estimate_shard(shard, args.job, ops, speed):
                print(json.dumps({"shard": shard, **dataclasses.asdict(stage)}))
        return 0
    print(f"backend speed: {_speed_line(speed)}")
    totals = []
    for shard in args.shards:
        stages = _estimate_shard(shard, args.job, ops, speed)
        totals.append(dataclasses.replace(estimate.total(stages), stage=f"shard {shard}"))
        print(f"\nshard {shard!r} ({args.job}):")
        print(estimate.table(stages, price_per_million=args.price))
    if len(totals) > 1:
        print("\nall shards:")
        print(estimate.table(totals, price_per_million=args.price))
    print(
        "\nAssumed: every output accepted and every candidate kept by the hub (calls after a lossy stage are an upper "
        "bound); answers as long as this model's earlier answers in the response cache, else typical ones."
    )
    return 0


DEFAULT_SERVED_LATENCY_S = 8.0  # a 7-8B model's answer of a few hundred tokens on a busy vLLM replica
LONG_RUN_S = 15 * 60  # `materialize` shows the estimate before a run longer than this


def _warn_if_long(shards: list[str], job: str, ops: dict) -> None:
    """Before a long run: the estimate and how to shrink it (the run goes on; Ctrl-C stops it)."""
    from persona_hub_dagster.lib import estimate

    try:
        speed = _backend_speed(DEFAULT_SERVED_LATENCY_S)
        stages = [s for shard in shards for s in _estimate_shard(shard, job, ops, speed)]
    except Exception as exc:  # noqa: BLE001 - an estimate is advice: never the reason a run does not start
        print(f"note: no estimate ({exc})", file=sys.stderr)
        return
    total = estimate.total(stages)
    if total.seconds is not None and total.seconds > LONG_RUN_S:
        print(f"estimate: this run will take about {estimate.duration(total.seconds)} on this backend:")
        print(estimate.table(stages))
        print(
            "To shrink it: a sample first (--sample 20), fewer personas per task (--set synthesize_math.personas=20), "
            "fewer relations (--set text_to_persona.relations_per_text=1), or a served model "
            "(PERSONA_HUB_LLM_BASE_URL). Details: `persona-hub estimate`.",
            flush=True,
        )


def _estimate_shard(shard: str, job_name: str, ops: dict, speed):
    """The job's LLM stages for one shard, in the job's order, each with this run's settings, estimated and timed."""
    from persona_hub_dagster.definitions import defs
    from persona_hub_dagster.defs.stages import DECLARED_STAGES, configured_model, stage_defaults
    from persona_hub_dagster.lib import estimate
    from persona_hub_dagster.lib.settings import settings_from

    store = DeltaStore()
    job = defs.resolve_job_def(job_name)
    stages = []
    for node in job.graph.nodes_in_topological_order:
        declared = DECLARED_STAGES.get(node.name)
        if declared is not None:
            defaults = dataclasses.asdict(stage_defaults(declared.settings, declared.op))
            stages.append((declared, settings_from(declared.settings, {**defaults, **ops.get(declared.op, {})})))
    registered = ShardRegistry(store).get(shard)
    shard_estimate = estimate.Estimating(
        texts=_shard_texts(store, registered, ops.get("ingest_raw_text", {})),
        count=estimate.token_counter(),
        model=configured_model(),
        store=store,
        given_personas=registered.given_personas,
    )
    return estimate.timed(estimate.estimate_stages(stages, shard_estimate), speed)


def _shard_texts(store: DeltaStore, registered, ingest_settings: dict):
    """The shard's texts as raw_text holds them: the table's when it was materialized, else read and cleaned from the
    registered file as raw_text would (nothing is written)."""
    import polars as pl

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.corpus.ingest import IngestSettings, ShardIngest
    from persona_hub_dagster.lib.settings import settings_from

    if store.exists(tables.RAW_TEXT) and registered.key in store.partitions(tables.RAW_TEXT):
        return store.scan(tables.RAW_TEXT, [registered.key]).select("text_id", "text").collect()
    settings = settings_from(IngestSettings, ingest_settings)
    ingest = ShardIngest(
        settings.source(registered),
        shard=registered.key,
        run_id="estimate",
        options=settings.cleaning(registered.given_personas),
    )
    batches = [pl.from_arrow(batch).select("text_id", "text") for batch in ingest.accepted()]
    return pl.concat(batches) if batches else pl.DataFrame(schema={"text_id": pl.String, "text": pl.String})


def _backend_speed(latency_s: float):
    """The configured generator's speed: the embedded model's calibrated on this machine (once, kept), a served
    model's from max_in_flight calls of `latency_s` each."""
    from persona_hub_dagster.defs.stages import configured_llm, configured_model
    from persona_hub_dagster.lib import estimate
    from persona_hub_dagster.lib.llm.settings import open_backend

    settings = configured_llm()
    if settings.backend != "llama_cpp":
        return estimate.Speed(0, 0, parallel=settings.max_in_flight, latency_s=latency_s, source="served")
    with open_backend(settings) as backend:
        return estimate.calibrate_embedded(backend, DeltaStore(), configured_model())


def _speed_line(speed) -> str:
    if speed.latency_s is not None:
        return f"a served model, {speed.parallel} calls at a time of ~{speed.latency_s:g} s each (--latency)"
    return (
        f"embedded model, prefill {speed.prefill_tokens_s:,.0f} tokens/s, decode {speed.decode_tokens_s:,.1f} "
        f"tokens/s ({speed.source})"
    )


def add_run_settings_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="a deterministic sample of N texts per shard, through every stage (text_to_persona.max_texts=N)",
    )
    command.add_argument(
        "--set",
        dest="settings_set",
        action="append",
        default=[],
        metavar="OP.SETTING=VALUE",
        help="a stage setting for this run, e.g. synthesize_math.personas=20 (repeatable; JSON values)",
    )
    command.add_argument(
        "--settings",
        dest="settings_file",
        metavar="FILE",
        help=f"a YAML/JSON file of stage settings (op: {{setting: value}}), the shape of {STAGE_SETTINGS_ENV}",
    )


def run_settings(args) -> dict[str, dict]:
    """The stage settings one run is given: the file, then each --set, then --sample; checked against the stages
    (a typo is a one-line error listing the valid names)."""
    from persona_hub_dagster.definitions import defs
    from persona_hub_dagster.defs.stages import check_run_settings

    ops: dict[str, dict] = read_stage_settings(args.settings_file) if args.settings_file else {}
    for text in args.settings_set:
        name, value = _setting(text)
        op, dot, setting_name = name.partition(".")
        if not dot or not op or not setting_name:
            raise ValueError(f"--set takes OP.SETTING=VALUE (e.g. synthesize_math.personas=20), not {text!r}")
        ops.setdefault(op, {})[setting_name] = value
    if args.sample is not None:
        if args.sample < 1:
            raise ValueError("--sample takes a number of texts, at least 1")
        ops.setdefault("text_to_persona", {})["max_texts"] = args.sample
    steps = [node.name for node in defs.resolve_job_def(args.job).graph.nodes]
    check_run_settings(ops)
    # A settings file may size stages of other jobs too (the demo's does); a --set for a stage the job does not
    # run is a mistake.
    given = {text.partition(".")[0] for text in args.settings_set}
    check_run_settings({op: ops[op] for op in given}, job_ops=steps)
    return {op: values for op, values in ops.items() if op in steps}


def cmd_shards(_args) -> int:
    frame = ShardRegistry(DeltaStore()).frame()
    if frame.is_empty():
        print("no shards registered")
        return 0
    print(f"{'order':>6}  {'shard':<40} {'kind':<9} {'format':<8} source")
    for order, row in enumerate(frame.iter_rows(named=True), 1):  # the registry's (registration) order
        print(f"{order:>6}  {row['shard']:<40} {row['kind']:<9} {row['format']:<8} {row['source_uri']}")
    return 0


def cmd_unregister_shard(args) -> int:
    from persona_hub_dagster.defs.partitions import unregister_shards
    from persona_hub_dagster.lib.shards import unregister_shard

    store = DeltaStore()
    planned = unregister_shard(store, args.key, dry_run=True)
    with _instance() as instance:
        partition = instance.has_dynamic_partition("text_shards", args.key)
        if not planned and not partition:
            print(f"error: shard {args.key!r} has no rows and no partition", file=sys.stderr)
            return 2
        print(f"Unregistering shard {args.key!r} deletes:")
        for table, rows in planned.items():
            print(f"  {rows:>10} rows of {table}")
        print(f"  {'the' if partition else 'no'} Dagster partition {args.key!r} of text_shards")
        if not args.yes:
            if not sys.stdin.isatty():
                print("error: not confirmed; run again with --yes", file=sys.stderr)
                return 2
            if input("Delete all of this? [y/N] ").strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        deleted = unregister_shards(instance, store, args.key)
    print(f"unregistered shard {args.key!r}: {sum(deleted.values())} rows in {len(deleted)} tables")
    print("Later hub shards deduplicated against it are flagged by the prefix_complete check for a rebuild.")
    return 0


def cmd_prompt(args) -> int:
    from persona_hub_dagster.lib.settings import settings_from
    from persona_hub_dagster.lib.synthesis.generate import example_requests
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    task = TASKS[args.task]
    values = dict(_setting(text) for text in args.set)
    settings = settings_from(task.settings, {**values, "prompting": args.mode})
    shown, note = example_requests(task, settings, args.persona, DeltaStore())
    if note:
        print(f"note: {note}", file=sys.stderr)
    for label, request in shown:
        print(f"===== synthetic/{task.name} · {args.mode} · {label} =====")
        for message in request.messages:
            print(f"--- {message['role']} ---\n{message['content']}")
        if request.json_schema is not None:
            print(f"--- answer schema ---\n{json.dumps(request.json_schema)}")
        print()
    return 0


def cmd_contamination(args) -> int:
    from pathlib import PurePosixPath

    from persona_hub_dagster.lib.evaluation import contamination

    items = contamination.read_texts(args.items, args.items_field)
    benchmarks = []
    for spec in args.benchmark:
        name, separator, path = spec.partition("=")
        if not separator or "/" in name:
            name, path = PurePosixPath(spec).name.split(".")[0], spec
        benchmarks.append(contamination.benchmark_from_spec(f"{name}={path}#{args.benchmark_field}"))
    encode, threshold = None, args.threshold or contamination.EMBEDDING_THRESHOLD
    if args.embeddings != "none":
        from persona_hub_dagster.lib.embeddings import Embedder

        embedder = Embedder(fast=args.embeddings == "fast", static_cache_root=DeltaStore().root)
        encode, threshold = embedder.encode, args.threshold or embedder.duplicate_threshold
    started = time.perf_counter()
    flags = contamination.contamination(items, benchmarks, encode=encode, threshold=threshold)
    for row in flags.drop("evidence").iter_rows(named=True):
        print(json.dumps(row))
    print(
        f"{flags['item_index'].n_unique()} of {len(items)} items flagged against "
        f"{', '.join(f'{b.name} ({len(b.texts)} records)' for b in benchmarks)} "
        f"(13-grams{'' if encode is None else f' and {args.embeddings} cosine >= {threshold}'}) "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_trace(args) -> int:
    from persona_hub_dagster.lib.lineage import format_trace, trace_any

    traced = trace_any(DeltaStore(), args.id)
    print(json.dumps(traced.as_dict(), indent=2, default=str) if args.json else format_trace(traced))
    return 0


def cmd_export(args) -> int:
    from persona_hub_dagster.lib.settings import settings_from
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    values = {} if args.test_fraction is None else {"test_fraction": args.test_fraction}
    store = DeltaStore()
    built = release.build(store, TASKS[args.task], settings_from(release.ReleaseSettings, values))
    formats = tuple(args.format or ["parquet"])
    written = release.write(built, args.out, formats, storage_root=store.root, force=args.force)
    if written.moved_aside:
        print(f"note: {args.out} held files no release wrote: moved them to {written.moved_aside}")
    counts = built.counts()
    print(f"release {args.task}: {counts['train']} train, {counts['test']} test items -> {args.out}")
    for path in sorted(written.files):
        print(f"  {path}")
    if args.push:
        return _push(args.out, args.push)
    return 0


def _push(folder: str, repo_id: str) -> int:
    """Upload a release folder to a Hugging Face dataset repository (needs network and HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi

        # The marker is this machine's bookkeeping (what a re-export may replace), not part of the data set.
        HfApi().upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="dataset", ignore_patterns=[release.MARKER]
        )
    except Exception as exc:  # offline, no token, no such repo: one line, not a trace
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"error: could not push to the Hugging Face Hub dataset {repo_id!r}: {reason}", file=sys.stderr)
        return 1
    print(f"pushed to https://huggingface.co/datasets/{repo_id}")
    return 0


def cmd_demonstrations(args) -> int:
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    config = {"derive_demonstration_personas": {"config": {"tasks": tasks}}} if tasks else None
    return _run_job(DEMONSTRATIONS_JOB, ops_config=config)


def cmd_demo(_args) -> int:
    sample = resources.files("persona_hub_dagster") / "data" / "sample_corpus.jsonl"
    shard = shard_file(filesystems.stat(str(sample)), key=SAMPLE_SHARD)
    # replace=True: the demo stays runnable after the checkout moves, which changes the sample's path.
    _register(shard, replace=True)
    started = time.perf_counter()
    # persona_few_shot shows each demonstration's derived persona: derive them first (once; cached afterwards).
    demonstrations = "derive_demonstration_personas"
    status = _run_job(DEMONSTRATIONS_JOB, ops_config=None if _args.full else _demo_ops_config(demonstrations))
    status = status or _materialize(
        [SAMPLE_SHARD], DEFAULT_JOB, ops_config=None if _args.full else _demo_ops_config(exclude=(demonstrations,))
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


def cmd_ui(args) -> int:
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or shutil.which("dagster")
    if dagster is None:
        print("error: the dagster command is not installed in this environment", file=sys.stderr)
        return 2
    os.chdir(project_dir())
    command = [dagster, "dev", "--host", "127.0.0.1", "--port", str(args.port), "--workspace", "workspace.yaml"]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}\n$ {' '.join(command)}", flush=True)
    os.execv(dagster, command)
    return 0  # not reached


COMMANDS = {
    "register-shard": cmd_register_shard,
    "materialize": cmd_materialize,
    "estimate": cmd_estimate,
    "shards": cmd_shards,
    "unregister-shard": cmd_unregister_shard,
    "prompt": cmd_prompt,
    "contamination": cmd_contamination,
    "export": cmd_export,
    "trace": cmd_trace,
    "demonstrations": cmd_demonstrations,
    "demo": cmd_demo,
    "ui": cmd_ui,
}


# ------------------------------------------------------------------------------------------------ helpers


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME as set, or `.dagster_home` in the project folder, holding the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_dir() / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config, project_config = home / "dagster.yaml", project_dir() / "dagster.yaml"
    if not config.exists() and project_config.is_file():
        config.symlink_to(project_config)
    return home


def _register(shard, *, text_column: str | None = None, replace: bool = False) -> bool:
    from persona_hub_dagster.defs.partitions import register_shards

    with _instance() as instance:
        new = register_shards(
            instance,
            ShardRegistry(DeltaStore()),
            [shard],
            registered_by="persona-hub register-shard",
            text_column=text_column,
            replace=replace,
        )
    return bool(new)


def _setting(text: str) -> tuple[str, object]:
    """`name=value` from the command line; the value is JSON when it parses (numbers, lists), else a string."""
    name, separator, value = text.partition("=")
    if not separator:
        raise ValueError(f"--set takes SETTING=VALUE, not {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


RUN_PID_TAG, RUN_HOST_TAG = "persona-hub/pid", "persona-hub/host"
VERBOSE = {"on": False}  # --verbose: full stack traces in the console


@contextlib.contextmanager
def _instance():
    """The Dagster instance the UI reads. Creating it (and migrating its storage) the first time is serialized
    across processes with a lock file in DAGSTER_HOME: concurrent first commands would otherwise each initialize
    the storage. Runs this command line started in a process that no longer exists are marked failed."""
    import dagster as dg

    home = Path(os.environ["DAGSTER_HOME"])
    with open(home / ".persona-hub.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance = dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with instance:
        _fail_dead_runs(instance)
        yield instance


def _fail_dead_runs(instance) -> None:
    """A run killed with its process stays STARTED forever in the local instance (in production the daemon's run
    monitoring catches it): mark ours failed when the process that ran it is gone."""
    import dagster as dg

    started = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=started, tags={RUN_HOST_TAG: socket.gethostname()}), limit=100
    )
    for run in runs:
        pid = int(run.tags.get(RUN_PID_TAG, "0"))
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(
                run, f"The persona-hub process ({pid}) that ran this run is gone (killed?); marked failed."
            )
            print(f"note: run {run.run_id} was left running by a process that is gone; marked it failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_config(ops_config: dict | None) -> dict:
    return {
        "loggers": {"console": {"config": {"log_level": "INFO", "verbose": VERBOSE["on"]}}},
        **({"ops": ops_config} if ops_config else {}),
    }


def _report(result) -> None:
    """One line for the run; for a failure, what went wrong in one line (the trace: --verbose, or the UI)."""
    print(f"  run {result.run_id}: {'success' if result.success else 'FAILED'}")
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure or event.is_run_failure:
                print(f"error: {event.step_key or 'run'}: {failure_cause(event)}", file=sys.stderr)
                break


def failure_cause(event) -> str:
    """A failure event's cause in one line: a dg.Failure's own description, else the first error of the chain that is
    not Dagster's wrapper (DagsterExecutionStepExecutionError says only which op failed). That is the exception our
    code raised, whose message says what to do (it may itself wrap a lower-level error: the trace has those)."""
    data = event.step_failure_data if event.is_step_failure else event.event_specific_data
    if getattr(data, "user_failure_data", None) and data.user_failure_data.description:
        return data.user_failure_data.description.strip().splitlines()[0]
    error = getattr(data, "error", None)
    if error is None:
        return event.message or "failed"
    while error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    message = " ".join(error.message.split())
    # "package.module.ClassName: text" -> "ClassName: text"
    return message[message.find(error.cls_name) :] if error.cls_name and error.cls_name in message else message


def _run_job(job_name: str, ops_config: dict | None = None) -> int:
    """Run an unpartitioned job in this process, on the instance the UI reads."""
    from persona_hub_dagster.definitions import defs

    print(f"materializing {job_name} ...", flush=True)
    with _instance() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False, run_config=_run_config(ops_config), tags=_run_tags()
        )
    _report(result)
    return 0 if result.success else 1


def _run_tags() -> dict[str, str]:
    return {RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}


def _materialize(shards: list[str], job_name: str, ops_config: dict | None = None) -> int:
    from persona_hub_dagster.definitions import defs

    job = defs.resolve_job_def(job_name)
    failed = []
    with _instance() as instance:
        for shard in shards:
            if not instance.has_dynamic_partition("text_shards", shard):
                print(f"error: shard {shard!r} is not registered; see `persona-hub register-shard`", file=sys.stderr)
                failed.append(shard)
                continue
            print(f"materializing {job_name} for shard {shard!r} ...", flush=True)
            with _progress_bars():
                result = job.execute_in_process(
                    partition_key=shard,
                    instance=instance,
                    raise_on_error=False,
                    run_config=_run_config(ops_config),
                    tags=_run_tags(),
                )
            _report(result)
            if not result.success:
                failed.append(shard)
    return 1 if failed else 0


@contextlib.contextmanager
def _progress_bars():
    """In a terminal, a progress bar on stderr for each LLM stage of a job running in this process: requests answered
    of those planned so far, cache hits, answers/s and tokens/s from the backend, and an ETA once a few answers have
    arrived (fed by lib/llm/progress.py, which also logs the same in the run's log). Log lines are written through
    tqdm (defs/loggers.py), so they never land on a bar's line. Elsewhere (CI, a log file) there are no bars: the
    periodic log line remains."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    from persona_hub_dagster.lib.llm.progress import duration, subscribe

    bars: dict[str, tqdm] = {}
    # tqdm's own rate and remaining time would count cached answers and the first answer's instant; ours do not.
    layout = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def show(snapshot) -> None:
        bar = bars.get(snapshot.label)
        if bar is None:
            bar = bars[snapshot.label] = tqdm(
                desc=snapshot.label, unit="req", file=sys.stderr, dynamic_ncols=True, bar_format=layout
            )
        bar.total, bar.n = snapshot.planned, snapshot.done
        eta = {} if snapshot.eta_s is None or snapshot.finished else {"eta": duration(snapshot.eta_s)}
        bar.set_postfix(
            cached=snapshot.cache_hits,
            answers_s=f"{snapshot.answers_per_s:.2f}",
            tokens_s=f"{snapshot.tokens_per_s:.1f}",
            **eta,
            refresh=False,
        )
        bar.refresh()
        if snapshot.finished:
            bar.close()

    with subscribe(show):
        try:
            yield
        finally:
            for bar in bars.values():
                bar.close()


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
    from persona_hub_dagster.lib.generation import empty_table_explanation
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    print(f"\nOne example per synthesis task (shard {shard!r}):")
    for task in TASKS.values():
        stage = task.stage
        if not store.exists(stage.table):
            continue
        rows = store.scan(stage.table, [shard]).sort("item_id").head(1).collect()
        rejects = store.scan(stage.rejects, [shard]).select("reason").collect() if store.exists(stage.rejects) else None
        rejected = rejects.height if rejects is not None else 0
        counts = f"{store.row_count(stage.table, [shard])} items, {rejected} rejected"
        if rows.is_empty():
            why = empty_table_explanation(rejects["reason"].to_list() if rejected else [])
            print(f"  {stage.name:<24} ({counts}) no item: {why}")
            continue
        row = rows.row(0, named=True)
        fields = {name: row[name] for name in task.columns}
        text = " ".join(json.dumps(fields, ensure_ascii=False, default=str).split())
        print(
            f"  {stage.name:<24} ({counts}, {row['prompting']}) {text[:width] + (' ...' if len(text) > width else '')}"
        )


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


if __name__ == "__main__":
    sys.exit(main())

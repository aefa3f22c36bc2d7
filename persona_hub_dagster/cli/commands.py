"""The commands of persona-hub but `estimate` (estimates.py) and `demo` (demo.py): each takes the parsed arguments
and returns the exit status."""

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from persona_hub_dagster.cli.estimates import warn_if_long
from persona_hub_dagster.cli.instance import open_instance, register
from persona_hub_dagster.cli.running import (
    DEFAULT_JOB,
    DEMONSTRATIONS_JOB,
    materialize,
    parse_setting,
    run_job,
    run_settings,
)
from persona_hub_dagster.lib import filesystems, release, release_export
from persona_hub_dagster.lib.locations import normalize_location, project_dir
from persona_hub_dagster.lib.shard_files import shard_file
from persona_hub_dagster.lib.shard_identity import alike_registered, content_digest
from persona_hub_dagster.lib.shards import ShardConflict, ShardRegistry
from persona_hub_dagster.lib.storage import DeltaStore


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
    new = register(shard, text_column=args.persona_column or args.text_column, replace=args.replace)
    kind = ", ready-made personas" if shard.kind == "personas" else ""
    print(f"{'registered' if new else 'updated'} shard {shard.key!r} -> {shard.uri} ({shard.format}{kind})")
    for line in alike:
        print(f"note: {line}; registered as shard {shard.key!r} too, as asked")
    if args.materialize:
        return materialize([shard.key], DEFAULT_JOB, verbose=args.verbose)
    print(f"materialize it with `persona-hub materialize {shard.key}`, or in the UI (raw_text, partition {shard.key})")
    return 0


def cmd_materialize(args) -> int:
    ops = run_settings(args)
    if args.sample is not None:
        print(f"a sample: {args.sample} texts of each shard go through every stage (text_to_persona.max_texts)")
    warn_if_long(args.shards, args.job, ops)
    ops_config = {op: {"config": values} for op, values in ops.items()} or None
    return materialize(args.shards, args.job, ops_config, verbose=args.verbose)


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
    with open_instance() as instance:
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
    values = dict(parse_setting(text) for text in args.set)
    settings = settings_from(task.settings, {**values, "prompting": args.mode})
    store, persona = DeltaStore(), args.persona
    if args.shard:
        drawn = _drawn(store, args.shard, settings)
        print(json.dumps({"selection": drawn.composition()}, ensure_ascii=False), file=sys.stderr)
        if not drawn.personas.height:
            print(f"error: these settings draw no persona from shard {args.shard!r}", file=sys.stderr)
            return 2
        persona = drawn.personas["persona"][0]
    shown, note = example_requests(task, settings, persona, store)
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


def _drawn(store: DeltaStore, shard: str, settings):
    """The personas a task's settings draw from a shard's hub (`prompt --shard`)."""
    from persona_hub_dagster.defs.models import EmbeddingsResource
    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.synthesis.generate import draw_personas

    hub = store.scan(tables.PERSONA_HUB, [shard]).collect() if store.exists(tables.PERSONA_HUB) else None
    if hub is None or not hub.height:
        raise SystemExit(f"error: shard {shard!r} has no persona_hub rows yet: materialize it first")
    return draw_personas(hub, settings, store, shard, EmbeddingsResource().lazy_embedder(store))


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


def cmd_personas(args) -> int:
    from persona_hub_dagster.defs.models import EmbeddingsResource
    from persona_hub_dagster.lib.coverage.search import SearchError, search

    store = DeltaStore()
    embedder = EmbeddingsResource(fast=_hub_vectors_fast(store)).lazy_embedder(store)
    try:
        found = search(store, args.query, embedder, k=args.k, shard=args.shard)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for row in found.iter_rows(named=True):
        if args.json:
            print(json.dumps(row, ensure_ascii=False, default=str))
        else:
            cluster = f"  [{row['cluster']}: {row['cluster_label']}]" if row.get("cluster") is not None else ""
            print(f"{row['rank']:>3}  {row['similarity']:.3f}  {row['shard']}  {row['persona_id']}{cluster}")
            print(f"     {row['persona']}")
    if not found.height:
        print("no personas found", file=sys.stderr)
    return 0


def _hub_vectors_fast(store: DeltaStore) -> bool:
    """Whether the hub's vectors are the fast (model2vec) distillation: the query must be embedded the same way."""
    from persona_hub_dagster.lib.dedup.build import open_index

    with open_index(store) as index:
        return (index.manifest.model or "").startswith("model2vec:")


def cmd_export(args) -> int:
    from persona_hub_dagster.lib.settings import settings_from
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    values = {} if args.test_fraction is None else {"test_fraction": args.test_fraction}
    store = DeltaStore()
    built = release.build(store, TASKS[args.task], settings_from(release.ReleaseSettings, values))
    formats = tuple(args.format or ["parquet"])
    written = release_export.write(built, args.out, formats, storage_root=store.root, force=args.force)
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
            folder_path=folder, repo_id=repo_id, repo_type="dataset", ignore_patterns=[release_export.MARKER]
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
    return run_job(DEMONSTRATIONS_JOB, ops_config=config, verbose=args.verbose)


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

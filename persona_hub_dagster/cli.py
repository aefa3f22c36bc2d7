"""persona-hub: register shards, materialize them, run the demo and open the UI.

Every command works on the same Dagster instance (DAGSTER_HOME) and storage root as the UI, so what it does shows
up there: registered shards as partitions, materializations as runs.
"""

import argparse
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.lineage import print_traced_example
from persona_hub_dagster.lib.locations import normalize_location, project_dir
from persona_hub_dagster.lib.shards import InvalidShard, ShardConflict, ShardRegistry, shard_file
from persona_hub_dagster.lib.storage import DeltaStore

SAMPLE_SHARD = "sample"
DEFAULT_JOB = "process_text_shard"
# Demo-sized settings: every stage runs, on a sample of the shard, so the embedded CPU model finishes in minutes.
# (The asset defaults are the full method: four relations per text, six hops, 200 personas per task, ...)
DEMO_OPS_CONFIG = {
    "text_to_persona": {"config": {"max_texts": 32, "relations_per_text": 1, "max_tokens": 64}},
    "persona_to_persona": {"config": {"hops": 2, "fan_out": 2, "max_calls": 28, "max_tokens": 160}},
    "synthesize_math": {"config": {"personas": 10}},
    "synthesize_instructions": {"config": {"personas": 8}},
    "evaluate_math": {
        "config": {
            "reasoning_solutions": 2,
            "program_solutions": 1,
            "min_agreement": 2,
            "reasoning_max_tokens": 256,
            "program_max_tokens": 192,
        }
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona-hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register-shard", help="register a file (local path or s3:// URI) as a shard")
    register.add_argument("path")
    register.add_argument("--key", help="shard key (default: derived from the file name)")
    register.add_argument("--format", choices=["jsonl", "parquet", "csv", "txt"], help="default: from the suffix")
    register.add_argument("--text-column", help="field/column holding the text (default: the asset config's, 'text')")
    register.add_argument("--replace", action="store_true", help="point an existing key at this file")
    register.add_argument("--materialize", action="store_true", help=f"then run {DEFAULT_JOB} for it")

    materialize = commands.add_parser("materialize", help="run a job for registered shards, in this process")
    materialize.add_argument("shards", nargs="+")
    materialize.add_argument("--job", default=DEFAULT_JOB, help=f"default {DEFAULT_JOB}: every stage of the shard")

    commands.add_parser("shards", help="list the registered shards")
    demo = commands.add_parser("demo", help=f"register the bundled sample corpus as shard '{SAMPLE_SHARD}', process it")
    demo.add_argument("--full", action="store_true", help="the asset defaults instead of demo-sized settings (hours)")

    ui = commands.add_parser("ui", help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)

    args = parser.parse_args(argv)
    ensure_dagster_home()
    try:
        return COMMANDS[args.command](args)
    except (InvalidShard, ShardConflict, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------ commands


def cmd_register_shard(args) -> int:
    location = normalize_location(args.path)
    entry = filesystems.stat(location)
    shard = shard_file(entry, key=args.key, file_format=args.format)
    new = _register(shard, text_column=args.text_column, replace=args.replace)
    print(f"{'registered' if new else 'updated'} shard {shard.key!r} -> {shard.uri} ({shard.format})")
    if args.materialize:
        return _materialize([shard.key], DEFAULT_JOB)
    print(f"materialize it with `persona-hub materialize {shard.key}`, or in the UI (raw_text, partition {shard.key})")
    return 0


def cmd_materialize(args) -> int:
    return _materialize(args.shards, args.job)


def cmd_shards(_args) -> int:
    frame = ShardRegistry(DeltaStore()).frame()
    if frame.is_empty():
        print("no shards registered")
        return 0
    for row in frame.iter_rows(named=True):
        print(f"{row['registration_seq']:>6}  {row['shard']:<40} {row['format']:<8} {row['source_uri']}")
    return 0


def cmd_demo(_args) -> int:
    sample = resources.files("persona_hub_dagster") / "data" / "sample_corpus.jsonl"
    shard = shard_file(filesystems.stat(str(sample)), key=SAMPLE_SHARD)
    # replace=True: the demo stays runnable after the checkout moves, which changes the sample's path.
    _register(shard, replace=True)
    started = time.perf_counter()
    status = _materialize([SAMPLE_SHARD], DEFAULT_JOB, ops_config=None if _args.full else DEMO_OPS_CONFIG)
    print(f"  ({time.perf_counter() - started:.0f} s)")
    _print_tables(SAMPLE_SHARD)
    if status == 0:
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
    "shards": cmd_shards,
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
    import dagster as dg

    from persona_hub_dagster.defs.partitions import register_shards

    with dg.DagsterInstance.get() as instance:
        new = register_shards(
            instance,
            ShardRegistry(DeltaStore()),
            [shard],
            registered_by="persona-hub register-shard",
            text_column=text_column,
            replace=replace,
        )
    return bool(new)


def _materialize(shards: list[str], job_name: str, ops_config: dict | None = None) -> int:
    import dagster as dg

    from persona_hub_dagster.definitions import defs

    job = defs.resolve_job_def(job_name)
    failed = []
    with dg.DagsterInstance.get() as instance:
        for shard in shards:
            if not instance.has_dynamic_partition("text_shards", shard):
                print(f"error: shard {shard!r} is not registered; see `persona-hub register-shard`", file=sys.stderr)
                failed.append(shard)
                continue
            print(f"materializing {job_name} for shard {shard!r} ...", flush=True)
            result = job.execute_in_process(
                partition_key=shard,
                instance=instance,
                raise_on_error=False,
                run_config={
                    "loggers": {"console": {"config": {"log_level": "INFO"}}},
                    **({"ops": ops_config} if ops_config else {}),
                },
            )
            print(f"  run {result.run_id}: {'success' if result.success else 'FAILED'}")
            if not result.success:
                failed.append(shard)
    return 1 if failed else 0


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


if __name__ == "__main__":
    sys.exit(main())

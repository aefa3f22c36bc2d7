"""persona-hub's command line: every command, its arguments and their help."""

import argparse

from persona_hub_dagster.cli.demo import SAMPLE_SHARD
from persona_hub_dagster.cli.estimates import DEFAULT_SERVED_LATENCY_S
from persona_hub_dagster.cli.running import DEFAULT_JOB
from persona_hub_dagster.lib.settings import STAGE_SETTINGS_ENV
from persona_hub_dagster.lib.shard_files import DEFAULT_PERSONA_COLUMN, KINDS
from persona_hub_dagster.lib.synthesis.generate import EXAMPLE_PERSONA
from persona_hub_dagster.lib.synthesis.steps import PROMPTING_MODES
from persona_hub_dagster.lib.synthesis.tasks import TASKS


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona-hub", description=description)
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
    prompt.add_argument("task", choices=sorted(TASKS))
    prompt.add_argument("--mode", choices=PROMPTING_MODES, default="zero_shot", help="prompting mode (zero_shot)")
    prompt.add_argument("--persona", default=EXAMPLE_PERSONA, help="the persona to render with")
    prompt.add_argument(
        "--shard",
        help="draw from this shard's hub as the settings would (query, clusters, where, sampling): print what they "
        "select and render with the first persona drawn",
    )
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

    personas = commands.add_parser("personas", help="what the persona hub holds").add_subparsers(
        dest="personas_command", required=True
    )
    search = personas.add_parser("search", help="the hub's personas nearest to a query, with clusters and lineage ids")
    search.add_argument("query", help="what to look for, e.g. 'people who build things with their hands'")
    search.add_argument("--k", type=int, default=10, help="how many personas (default 10)")
    search.add_argument("--shard", help="only this shard's personas")
    search.add_argument("--json", action="store_true", help="one JSON object per persona")

    export = commands.add_parser(
        "export", help="write a task's training-ready release (HF datasets layout) to a folder"
    )
    export.add_argument("task", choices=sorted(TASKS))
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

    return parser


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

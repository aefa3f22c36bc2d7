"""persona-hub: register shards, materialize them, review prompts, run the demo and open the UI.

Every command works on the same Dagster instance (DAGSTER_HOME) and storage root as the UI, so what it does shows
up there: registered shards as partitions, materializations as runs.

The package: parser.py (the command line), commands.py (the commands), estimates.py (`estimate`, and the estimate
before a long run), demo.py (`demo` and what it prints), running.py (jobs run in this process, progress bars, one
line per run), instance.py (DAGSTER_HOME, opening the instance, runs of a process that is gone).
"""

import sys

from persona_hub_dagster.cli.commands import (
    cmd_contamination,
    cmd_demonstrations,
    cmd_export,
    cmd_materialize,
    cmd_personas,
    cmd_prompt,
    cmd_register_shard,
    cmd_shards,
    cmd_trace,
    cmd_ui,
    cmd_unregister_shard,
)
from persona_hub_dagster.cli.demo import cmd_demo
from persona_hub_dagster.cli.estimates import cmd_estimate
from persona_hub_dagster.cli.instance import ensure_dagster_home
from persona_hub_dagster.cli.parser import build_parser
from persona_hub_dagster.lib import release_export
from persona_hub_dagster.lib.shard_files import InvalidShard
from persona_hub_dagster.lib.shards import ShardConflict

__all__ = ["main"]

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
    "personas": cmd_personas,
    "demonstrations": cmd_demonstrations,
    "demo": cmd_demo,
    "ui": cmd_ui,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    ensure_dagster_home()
    try:
        return COMMANDS[args.command](args)
    except (InvalidShard, ShardConflict, release_export.ExportError, FileNotFoundError, LookupError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2

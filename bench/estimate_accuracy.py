"""How far `persona-hub estimate` is from the run it predicts: per stage, the estimated calls, tokens and time against
what the run then did (its llm/* metadata), on corpora of different shapes, each in a fresh storage root (an empty
response cache: the estimate uses the stages' typical lengths, as a first estimate would).

    .venv/bin/python bench/estimate_accuracy.py sample              # the bundled sample corpus, the demo's settings
    .venv/bin/python bench/estimate_accuracy.py wikitext --texts 1000 --sample 20   # long paragraphs, sampled
    .venv/bin/python bench/estimate_accuracy.py FILE.jsonl --sample 20

Both estimates are reported: the one printed before the run (`estimate`, which also guesses every row count on the
way) and the one each stage records when it runs (`estimate/*` metadata: the same estimator given the rows the stage
actually read). Calls are compared with the requests the stages planned (`llm/requests`) and with the backend calls
they made (`llm/calls`, retries of rejected outputs included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO_SETTINGS = REPO / "persona_hub_dagster" / "data" / "demo_settings.yaml"
CORPORA = {
    "sample": REPO / "persona_hub_dagster" / "data" / "sample_corpus.jsonl",
    "wikitext": SHARED / "wikitext2_test_paragraphs.jsonl",
}


def cli(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "persona_hub_dagster.cli", *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"persona-hub {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def actuals(home: str, shard: str) -> dict[str, dict]:
    """Each stage's llm/* and estimate/* metadata from the run's materializations."""
    import dagster as dg

    from persona_hub_dagster.definitions import defs  # noqa: F401 - loads the stage registry
    from persona_hub_dagster.defs.stages import DECLARED_STAGES, asset_key

    found = {}
    with dg.DagsterInstance.from_config(home) as instance:
        for declared in DECLARED_STAGES.values():
            event = instance.get_latest_materialization_event(asset_key(declared.table))
            if event is None or event.asset_materialization.partition not in (shard, None):
                continue
            metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            if "llm/requests" in metadata:
                found[declared.table.name] = metadata
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", help="sample | wikitext | a JSONL file with a `text` field")
    parser.add_argument("--texts", type=int, help="the corpus's first N records")
    parser.add_argument("--sample", type=int, help="materialize/estimate --sample N")
    args = parser.parse_args()

    source = CORPORA.get(args.corpus, Path(args.corpus))
    root = Path(tempfile.mkdtemp(prefix="estimate-bench-"))
    corpus = root / f"{source.stem.replace('_', '-')[:40]}.jsonl"
    with source.open(encoding="utf-8") as lines:
        records = [line for index, line in enumerate(lines) if args.texts is None or index < args.texts]
    corpus.write_text("".join(records), encoding="utf-8")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "home"),
        "PERSONA_HUB_STORAGE": str(root / "delta"),
        "PERSONA_HUB_AUTOMATION": "0",
    }
    (root / "home").mkdir()
    shard = cli(env, "register-shard", str(corpus)).split("'")[1]
    sized = ["--settings", str(DEMO_SETTINGS), *(["--sample", str(args.sample)] if args.sample else [])]
    cli(env, "demonstrations", "--tasks", "instructions,npc")
    started = time.perf_counter()
    predicted = [json.loads(line) for line in cli(env, "estimate", shard, *sized, "--json").splitlines()]
    estimate_s = time.perf_counter() - started
    started = time.perf_counter()
    cli(env, "materialize", shard, *sized)
    run_s = time.perf_counter() - started
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    os.environ["PERSONA_HUB_STORAGE"] = env["PERSONA_HUB_STORAGE"]
    done = actuals(env["DAGSTER_HOME"], shard)

    print(f"corpus {args.corpus}: {len(records)} records, shard {shard!r}, {' '.join(sized[2:]) or 'no sample'}")
    print(f"estimate took {estimate_s:.0f} s (calibration included); the run {run_s:.0f} s\n")
    head = (
        "| stage | est. calls | requests | calls | in-run est. | est. tokens | tokens | in-run est. tokens "
        "| est. time | backend time |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sums = {k: 0.0 for k in ("calls", "requests", "actual_calls", "tokens", "actual_tokens", "seconds", "backend")}
    for stage in predicted:
        name, actual = stage["stage"], done.get(stage["stage"], {})
        tokens = actual.get("llm/prompt_tokens", 0) + actual.get("llm/completion_tokens", 0)
        in_run = actual.get("estimate/prompt_tokens", 0) + actual.get("estimate/completion_tokens", 0)
        estimated_tokens = stage["prompt_tokens"] + stage["completion_tokens"]
        print(
            f"| {name} | {stage['calls']} | {actual.get('llm/requests', '-')} | {actual.get('llm/calls', '-')} "
            f"| {actual.get('estimate/calls', '-')} | {estimated_tokens:,} | {tokens:,} | {in_run:,} "
            f"| {stage['seconds'] or 0:.0f} s | {actual.get('llm/backend_seconds', 0):.0f} s |"
        )
        sums["calls"] += stage["calls"]
        sums["requests"] += actual.get("llm/requests", 0)
        sums["actual_calls"] += actual.get("llm/calls", 0)
        sums["tokens"] += estimated_tokens
        sums["actual_tokens"] += tokens
        sums["seconds"] += stage["seconds"] or 0
        sums["backend"] += actual.get("llm/backend_seconds", 0)

    def error(estimated: float, actual: float) -> str:
        return f"{(estimated - actual) / actual:+.0%}" if actual else "-"

    print(
        f"\ntotals: calls {sums['calls']:.0f} estimated vs {sums['requests']:.0f} requests "
        f"({error(sums['calls'], sums['requests'])}) and {sums['actual_calls']:.0f} calls "
        f"({error(sums['calls'], sums['actual_calls'])}); tokens {sums['tokens']:,.0f} vs {sums['actual_tokens']:,.0f} "
        f"({error(sums['tokens'], sums['actual_tokens'])}); time {sums['seconds']:.0f} s vs {sums['backend']:.0f} s "
        f"of backend time ({error(sums['seconds'], sums['backend'])})"
    )


if __name__ == "__main__":
    main()

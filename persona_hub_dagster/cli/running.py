"""Running jobs in this process on the instance the UI reads: the run settings a command line gives, the run's
config and tags, a progress bar per LLM stage in a terminal, and one line per run (for a failure, its root cause)."""

import contextlib
import json
import sys

from persona_hub_dagster.cli.instance import open_instance, run_tags
from persona_hub_dagster.lib.settings import read_stage_settings

DEFAULT_JOB = "process_text_shard"
DEMONSTRATIONS_JOB = "prepare_demonstrations"


def run_settings(args) -> dict[str, dict]:
    """The stage settings one run is given: the file, then each --set, then --sample; checked against the stages
    (a typo is a one-line error listing the valid names)."""
    from persona_hub_dagster.definitions import defs
    from persona_hub_dagster.defs.stages import check_run_settings

    ops: dict[str, dict] = read_stage_settings(args.settings_file) if args.settings_file else {}
    for text in args.settings_set:
        name, value = parse_setting(text)
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


def parse_setting(text: str) -> tuple[str, object]:
    """`name=value` from the command line; the value is JSON when it parses (numbers, lists), else a string."""
    name, separator, value = text.partition("=")
    if not separator:
        raise ValueError(f"--set takes SETTING=VALUE, not {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def run_job(job_name: str, ops_config: dict | None = None, *, verbose: bool) -> int:
    """Run an unpartitioned job in this process, on the instance the UI reads (verbose: --verbose, full stack traces
    in the console)."""
    from persona_hub_dagster.definitions import defs

    print(f"materializing {job_name} ...", flush=True)
    with open_instance() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False, run_config=_run_config(ops_config, verbose), tags=run_tags()
        )
    _report(result)
    return 0 if result.success else 1


def materialize(shards: list[str], job_name: str, ops_config: dict | None = None, *, verbose: bool) -> int:
    """Run a partitioned job for each shard in this process, on the instance the UI reads (verbose: as run_job's)."""
    from persona_hub_dagster.definitions import defs

    job = defs.resolve_job_def(job_name)
    failed = []
    with open_instance() as instance:
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
                    run_config=_run_config(ops_config, verbose),
                    tags=run_tags(),
                )
            _report(result)
            if not result.success:
                failed.append(shard)
    return 1 if failed else 0


def _run_config(ops_config: dict | None, verbose: bool) -> dict:
    return {
        "loggers": {"console": {"config": {"log_level": "INFO", "verbose": verbose}}},
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

"""`persona-hub estimate`, and the estimate `materialize` prints before a long run: per stage of a job, the LLM
calls, tokens and time on the configured backend."""

import dataclasses
import json
import sys

from persona_hub_dagster.cli.running import run_settings
from persona_hub_dagster.lib.shards import ShardRegistry
from persona_hub_dagster.lib.storage import DeltaStore

DEFAULT_SERVED_LATENCY_S = 8.0  # a 7-8B model's answer of a few hundred tokens on a busy vLLM replica
LONG_RUN_S = 15 * 60  # `materialize` shows the estimate before a run longer than this


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


def warn_if_long(shards: list[str], job: str, ops: dict) -> None:
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
    from persona_hub_dagster.defs.models import EmbeddingsResource
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
        shard=shard,
        embedder=EmbeddingsResource().lazy_embedder(store),
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

"""Lineage through the Delta tables alone: from any synthetic item or evaluation row back to the web text.

    eval/<task>.item_id -> synthetic/<task>.persona_id -> persona_hub (source: text_personas or expanded_personas)
      -> expanded_personas.parent_persona_id ... (hop by hop) -> text_personas.text_id -> raw_text

(and synthetic/<task>.demonstration_ids -> demonstrations.demonstration_id for the few-shot modes)

Every step is a join on id columns the stages write; no Dagster metadata is needed, so the same walk works in any
engine that reads Delta (polars, DuckDB, Spark).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.personas import GIVEN
from persona_hub_dagster.lib.storage import DeltaStore

HUB = tables.PERSONA_HUB
TEXT_PERSONAS = tables.TEXT_PERSONAS
EXPANDED_PERSONAS = tables.EXPANDED_PERSONAS
RAW_TEXT = tables.RAW_TEXT


@dataclass
class Trace:
    evaluation: dict[str, Any] | None
    item: dict[str, Any] | None
    hub_persona: dict[str, Any] | None
    chain: list[dict[str, Any]] = field(default_factory=list)  # the persona, its parent, ..., the text persona
    text: dict[str, Any] | None = None
    task: str | None = None
    shard: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The chain as plain JSON-able data: item -> evaluation -> persona -> parents -> source text."""

        def clean(row: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if row is None else {k: v for k, v in row.items() if k != "vector"}

        return {
            "task": self.task,
            "shard": self.shard,
            "item": clean(self.item),
            "evaluation": clean(self.evaluation),
            "persona": clean(self.hub_persona),
            "chain": [clean(p) for p in self.chain],
            "source": None
            if self.text is None
            else {k: self.text.get(k) for k in ("text_id", "source_uri", "record_index", "text")},
        }


def trace_any(store: DeltaStore, identifier: str, *, tasks=None) -> Trace:
    """What an id names, traced to its source: an item of any task (with its evaluation), a persona (hub, text or
    expanded), or a source text. Ids are content hashes, so one id names one thing; searched in that order."""
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    for name in tasks or TASKS:
        table = tables.synthetic(name).table
        if store.exists(table):
            found = store.scan(table).filter(pl.col("item_id") == identifier).select("shard").head(1).collect()
            if found.height:
                trace = trace_item(store, found["shard"][0], identifier, task=name)
                trace.task, trace.shard = name, found["shard"][0]
                return trace
    for table in (HUB, EXPANDED_PERSONAS, TEXT_PERSONAS):
        if store.exists(table):
            found = store.scan(table).filter(pl.col("persona_id") == identifier).head(1).collect()
            if found.height:
                row = found.row(0, named=True)
                chain, text = trace_persona(store, row["shard"], row)
                hub = row if table == HUB else None
                return Trace(None, None, hub, chain=chain, text=text, shard=row["shard"])
    if store.exists(RAW_TEXT):
        found = store.scan(RAW_TEXT).filter(pl.col("text_id") == identifier).head(1).collect()
        if found.height:
            row = found.row(0, named=True)
            return Trace(None, None, None, text=row, shard=row["shard"])
    raise LookupError(f"{identifier!r} is no item, persona or text id in {store.root}")


def _one(store: DeltaStore, table: tables.Table, shard: str, **equal: str) -> dict[str, Any] | None:
    frame = store.scan(table, [shard])
    for column, value in equal.items():
        frame = frame.filter(pl.col(column) == value)
    rows = frame.head(1).collect()
    return rows.row(0, named=True) if rows.height else None


def trace_item(store: DeltaStore, shard: str, item_id: str, *, task: str | None = None) -> Trace:
    """Walk from a synthetic item of `task` (default: the task that has it) and its evaluation row, when there is
    one, to its source text."""
    if task is None:
        task = _task_of(store, shard, item_id)
    table = tables.synthetic(task).table
    item = _one(store, table, shard, item_id=item_id)
    if item is None:
        raise LookupError(f"No item {item_id!r} in {table.name} for shard {shard!r}")
    evaluated = tables.evaluation(task, "").table
    evaluation = _one(store, evaluated, shard, item_id=item_id) if store.exists(evaluated) else None
    hub_persona = _one(store, HUB, shard, persona_id=item["persona_id"])
    if hub_persona is None:
        raise LookupError(f"Persona {item['persona_id']!r} of item {item_id!r} is not in the hub of shard {shard!r}")
    chain, text = trace_persona(store, shard, hub_persona)
    return Trace(evaluation=evaluation, item=item, hub_persona=hub_persona, chain=chain, text=text)


def _task_of(store: DeltaStore, shard: str, item_id: str) -> str:
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    for name in TASKS:
        table = tables.synthetic(name).table
        if store.exists(table) and _one(store, table, shard, item_id=item_id) is not None:
            return name
    raise LookupError(f"No item {item_id!r} of any task for shard {shard!r}")


def trace_persona(
    store: DeltaStore, shard: str, persona: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the persona, its parent, ..., the text persona it started from; that text's raw_text row)."""
    chain: list[dict[str, Any]] = []
    current, hops = persona, 0
    while current is not None and current.get("parent_persona_id") and hops < 64:
        parent_id = current["parent_persona_id"]
        parent = _one(store, EXPANDED_PERSONAS, shard, persona_id=parent_id) if current.get("hop", 1) > 1 else None
        if parent is None:
            parent = _one(store, TEXT_PERSONAS, shard, persona_id=parent_id)
        chain.append(current)
        current, hops = parent, hops + 1
    if current is not None:
        chain.append(current)
    text_id = (chain[-1] if chain else persona).get("text_id")
    return chain, _one(store, RAW_TEXT, shard, text_id=text_id) if text_id else None


def print_traced_example(store: DeltaStore, shard: str, width: int = 110) -> None:
    """The demo's closing example: one evaluated item (of the first task in the registry that has items in the
    shard), its persona, the persona's ancestors, the source text."""
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    task = next(
        (t for t in TASKS.values() if store.exists(t.table) and store.row_count(t.table, [shard]) > 0),
        None,
    )
    if task is None:
        print("\n(no synthetic items to trace)")
        return
    items = store.scan(task.table, [shard]).select("item_id", "persona_id").collect()
    hub = store.scan(HUB, [shard]).select("persona_id", "source").collect()
    ranked = items.join(hub, on="persona_id", how="left").with_columns(
        expanded=(pl.col("source") == "expanded_personas")
    )
    evaluated = tables.evaluation(task.name, "").table
    if store.exists(evaluated):
        passed = store.scan(evaluated, [shard]).select("item_id", "passed").collect()
        ranked = ranked.join(passed, on="item_id", how="left")
    else:
        ranked = ranked.with_columns(passed=pl.lit(None, dtype=pl.Boolean))
    # Prefer an item whose persona came from expansion (it shows the chain of parents), one that passed if possible.
    chosen = ranked.sort(["expanded", "passed", "item_id"], descending=[True, True, False], nulls_last=True)
    trace = trace_item(store, shard, chosen["item_id"][0], task=task.name)

    def show(label: str, text: str | None) -> None:
        text = " ".join((text or "").split())
        print(f"  {label:<14} {text[:width] + (' ...' if len(text) > width else '')}")

    print("\nOne traced example (every step is a join on the Delta tables; see lib/lineage.py):")
    show(f"{task.name} item", task.item_text(trace.item))
    if trace.evaluation is not None:
        show("evaluation", _evaluation_flags(trace.evaluation))
    show_chain(trace.chain, trace.text, show)
    expanded = (
        store.scan(HUB, [shard]).filter(pl.col("source") == "expanded_personas").sort("hop", "persona_id").collect()
        if len(trace.chain) < 2 and "hop" in store.scan(HUB, [shard]).collect_schema()
        else pl.DataFrame()
    )
    if expanded.height:
        # This item's persona came straight from a text; show a Persona-to-Persona chain of the hub as well.
        print("\nAnd one Persona-to-Persona chain of the hub, from the deepest hop back to its text:")
        show_chain(*trace_persona(store, shard, expanded.row(expanded.height - 1, named=True)), show)


def _evaluation_flags(ev: dict[str, Any]) -> str:
    flags = [f"passed={ev.get('passed')}"]
    if ev.get("duplicate_of"):
        flags.append(f"near-duplicate of {ev['duplicate_of']}")
    if ev.get("contaminated"):
        flags.append(f"contaminated ({ev['contamination_benchmark']} #{ev['contamination_index']})")
    return ", ".join(flags)


def show_chain(chain: list[dict[str, Any]], text: dict[str, Any] | None, show) -> None:
    for depth, persona in enumerate(chain):
        label = "persona" if depth == 0 else "parent" if depth == 1 else f"ancestor {depth}"
        relation = f"[{persona.get('relation')}] " if persona.get("relation") else ""
        show(label, f"{relation}{persona['persona']}")
    if text is not None:
        if not (chain and chain[-1].get("relation") == GIVEN):  # a given persona is its record's text
            show("source text", text["text"])
        show("from", f"{text['source_uri']} (text_id {text['text_id']})")


def format_trace(trace: Trace, width: int = 110) -> str:
    """The chain as lines a person reads: item, evaluation, persona and its ancestors, source text and record."""
    lines: list[str] = []

    def show(label: str, text: str | None) -> None:
        text = " ".join(str(text or "").split())
        lines.append(f"  {label:<14} {text[:width] + (' ...' if len(text) > width else '')}")

    if trace.item is not None:
        item = trace.item
        show(f"{trace.task} item", f"{item['item_id']} (shard {trace.shard}, {item.get('prompting', 'zero_shot')})")
        from persona_hub_dagster.lib.synthesis.tasks import TASKS

        show("content", TASKS[trace.task].item_text(item) if trace.task in TASKS else "")
    if trace.evaluation is not None:
        show("evaluation", _evaluation_flags(trace.evaluation))
    show_chain(trace.chain, trace.text, show)
    if trace.text is not None and "record_index" in trace.text:
        show("record", f"{trace.text['source_uri']} #{trace.text['record_index']}")
    return "\n".join(lines)

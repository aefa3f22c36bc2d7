"""The catalog: every Delta table of the project, and the tables each stage writes together, named once.

A table is `<storage root>/<path>`; for an asset the path is its asset key (defs/ builds the `AssetKey`s from here). A
stage is one step that writes several tables together, its `StageTables`: its main table first, whose name is the
stage's name everywhere (asset key, the `stage` column of rejects, the response cache's namespace), then its rejects
table and any other table it writes. Tables under `_index/`, `_cache/` and `_meta/` are the platform's own bookkeeping,
not assets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    path: tuple[str, ...]  # a table is its path: equal paths are the same table, whatever the description
    description: str = field(default="", compare=False)
    partitioned: bool = True  # by shard (the `shard` column); False: one table across shards

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class StageTables:
    """The tables one stage writes together (a `lib.stage.Stage` declares them as `writes`; the raw_text and hub
    steps, wired in defs/, write theirs the same way)."""

    tables: tuple[Table, ...]  # the main table first, then the rejects table (when it has one), then the others

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def table(self) -> Table:
        return self.tables[0]

    @property
    def rejects(self) -> Table | None:
        wanted = self.table.path[:-1] + (f"{self.table.path[-1]}_rejects",)
        return next((t for t in self.tables if t.path == wanted), None)

    @property
    def partitioned(self) -> bool:
        return self.table.partitioned


def rejects_of(table: Table, what: str) -> Table:
    """`<table>_rejects`: what a stage could not use, verbatim, with the reason (never dropped silently)."""
    return Table(
        table.path[:-1] + (f"{table.path[-1]}_rejects",),
        f"{what} that {table.name} could not use, verbatim (`raw_output`), with the reason, the request's ids, the "
        "model and the prompt version.",
        table.partitioned,
    )


# ---------------------------------------------------------------------------------------------------- ingestion

RAW_TEXT = Table(
    ("raw_text",),
    "The texts of one shard, Unicode-normalized, whitespace-collapsed, within the length limits and without exact "
    "duplicates. `text_id` is a content hash; `source_uri` and `record_index` point back to the record in the source "
    "file. For a shard of ready-made personas (kind `personas`), each row's text is one persona.",
)
RAW_TEXT_REJECTS = Table(
    ("raw_text_rejects",),
    "Every record of the shard that did not make it into raw_text, with the reason (invalid_json, missing_text, "
    "undecodable_bytes, too_short, too_long, duplicate, ...) and the raw content: nothing is dropped silently.",
)
INGESTION = StageTables((RAW_TEXT, RAW_TEXT_REJECTS))

# ---------------------------------------------------------------------------------------------------- personas

TEXT_PERSONAS = Table(
    ("text_personas",),
    "Text-to-Persona: for each text of the shard, who is likely to read, write, like or dislike it, as a persona "
    "description. `persona_id` hashes the normalized description; `text_id` joins raw_text. A shard of ready-made "
    "personas passes its personas through as they are (relation `given`, no LLM call).",
)
TEXT_TO_PERSONA = StageTables((TEXT_PERSONAS, rejects_of(TEXT_PERSONAS, "Text-to-Persona outputs")))

EXPANDED_PERSONAS = Table(
    ("expanded_personas",),
    "Persona-to-Persona, the nightly stage: from each text persona, the people in close relationships with it "
    "(patient, colleague, supplier, family member, ...), hop after hop up to `hops`, within a per-shard budget of LLM "
    "calls. Each row records parent_persona_id, root_persona_id, hop, relation and the root's text_id. Materialized "
    "every night at 02:00 for shards whose text personas changed (schedule nightly_persona_expansion); a re-run "
    "replays finished calls from the response cache. Shards of ready-made personas are expanded only with "
    "`expand_persona_shards`.",
)
PERSONA_TO_PERSONA = StageTables((EXPANDED_PERSONAS, rejects_of(EXPANDED_PERSONAS, "Persona-to-Persona outputs")))

# ---------------------------------------------------------------------------------------------------- the hub

PERSONA_HUB = Table(
    ("persona_hub",),
    "The deduplicated personas of each shard: quality-filtered, then MinHash (units that fit the script: words, Han "
    "characters, kana and Thai letter pairs; 128 permutations, Jaccard 0.9, exact-verified) and embedding cosine "
    "(0.9, for the scripts the embedding model reads) against the shard and every shard registered before it. "
    "Earlier shards never lose personas when later shards arrive.",
)
PERSONA_HUB_DECISIONS = Table(
    ("persona_hub_decisions",),
    "Every candidate persona with its decision: kept, or dropped with the reason (minhash, semantic, "
    "quality:<reason>), the persona it duplicates (duplicate_of, duplicate_of_shard) and the similarity; "
    "quality_edit says what the quality pass changed in a persona it kept, semantic_check why the embedding "
    "comparison was skipped (a script the model cannot read).",
)
HUB = StageTables((PERSONA_HUB, PERSONA_HUB_DECISIONS))
# Where the hub keeps what later shards are compared with, so earlier shards are never recomputed.
HUB_MINHASH_BANDS = Table(("_index", "persona_hub", "minhash_bands"))
HUB_EMBEDDINGS = Table(("_index", "persona_hub", "embeddings"))
HUB_RUNS = Table(("_index", "persona_hub", "runs"))
# Not a Delta table: the folder of the persistent cross-shard index (RocksDB + an inverted file of vectors), derived
# from the two tables above and persona_hub, appended per shard (lib/dedup/index.py).
HUB_INDEX_PATH = ("_index", "persona_hub", "lookup")
# Where persona_hub's candidates come from, in the order keep-first follows.
HUB_SOURCES = (TEXT_PERSONAS, EXPANDED_PERSONAS)

# ---------------------------------------------------------------------------------------------------- coverage

PERSONA_CLUSTERS = Table(
    ("persona_clusters",),
    "Every hub persona's place on the hub's coverage map: its cluster (k-means on the hub's embeddings; a negative "
    "id is the stratum of a script the embedding model cannot read), the cluster's label (its most distinctive "
    "terms), the cosine to the cluster's centroid and the clustering it was assigned under.",
)
COVERAGE = StageTables((PERSONA_CLUSTERS,))
# The clusterings themselves (centroids, labels, terms, example, training-sample sizes), one row per cluster, every
# clustering kept: persona_clusters rows name the one they were assigned under.
CLUSTERINGS = Table(("_index", "persona_clusters", "clusterings"), partitioned=False)
# Not a Delta table: the coverage maps (PNG) of each clustering and shard.
COVERAGE_MAPS_PATH = ("_index", "persona_clusters", "maps")

# ---------------------------------------------------------------------------------------------------- synthesis

DEMONSTRATION_PERSONAS = Table(
    ("demonstrations",),
    "The few-shot demonstration pools of every task, each entry with the persona that would have written it, derived "
    "once by Text-to-Persona (relation `write`): what persona-enhanced few-shot prompting shows beside each "
    "demonstration. One table across shards, refreshed when a pool, the prompt or the model changes.",
    partitioned=False,
)
DEMONSTRATIONS = StageTables(
    (DEMONSTRATION_PERSONAS, rejects_of(DEMONSTRATION_PERSONAS, "Text-to-Persona outputs for demonstrations"))
)


def synthetic(task: str, description: str = "") -> StageTables:
    """`synthetic/<task>` and `synthetic/<task>_rejects`."""
    table = Table(("synthetic", task), description)
    return StageTables((table, rejects_of(table, f"synthetic/{task} outputs (any step)")))


# ---------------------------------------------------------------------------------------------------- evaluation


def evaluation(task: str, description: str, *, rejects: bool = True, extra: tuple[Table, ...] = ()) -> StageTables:
    """`eval/<task>` (one row per item: `passed`, the per-check columns, the set properties), its rejects table when
    a model is asked (malformed judge or solver outputs), and any other table the evaluation writes."""
    table = Table(("eval", task), description)
    return StageTables((table, *([rejects_of(table, "Judge and solver outputs")] if rejects else []), *extra))


EVAL_MATH_SOLUTIONS = Table(
    ("eval", "math_solutions"),
    "Every solution: the reasoning or program, the stated/printed answer, its normalized form, and what went wrong "
    "when there is no answer (rejected output, program error, timeout).",
)
MATH_EVALUATION = evaluation(
    "math",
    "Each synthetic math problem solved independently (step-by-step solutions and a Python program run in a "
    "sandbox); answers normalized and compared. `agreement` is the largest group of equal answers; `verified` rows "
    "(agreement >= min_agreement) pass, and are the shard's verified set.",
    extra=(EVAL_MATH_SOLUTIONS,),
)
EVAL_MATH = MATH_EVALUATION.table
EVAL_REASONING_SOLUTIONS = Table(
    ("eval", "reasoning_solutions"),
    "Every independent solution of a reasoning problem: the reasoning, the answer, and whether it agrees with the "
    "generator's intended answer.",
)
EVAL_REPORT = Table(
    ("eval", "report"),
    "Every evaluation metric by task and shard, plus totals across shards: pass rate, per-check failures, diversity, "
    "persona grounding, contamination. The materialization shows a summary and charts; an HTML report is written "
    "next to the tables.",
    partitioned=False,
)

# ---------------------------------------------------------------------------------------------------- releases


def release(task: str) -> Table:
    """`release/<task>`: the task's training-ready items across shards (the files: `<root>/_releases/<task>/`)."""
    return Table(
        ("release", task),
        f"The training-ready {task} items of every shard: passed eval/{task}, not near-duplicates, not contaminated, "
        "with their persona, lineage ids, a deterministic train/test split and the chat `messages`. The same rows "
        f"are written as a Hugging Face datasets folder (data/*.parquet, chat/*.jsonl, README.md dataset card) at "
        f"<root>/_releases/{task}/, whose path and card are in the materialization's metadata.",
        partitioned=False,
    )


# ---------------------------------------------------------------------------------------------------- bookkeeping

LLM_RESPONSES = Table(("_cache", "llm_responses"), partitioned=False)  # partitioned by cache namespace instead
SHARD_REGISTRY = Table(("_meta", "text_shards"), partitioned=False)
# One commit per registration: its Delta version is the registration's place in the hub's order (see shards.py).
SHARD_REGISTRATIONS = Table(("_meta", "registrations"), partitioned=False)

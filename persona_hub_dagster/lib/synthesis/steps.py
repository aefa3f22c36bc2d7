"""What a synthesis task is made of: its settings, its context, and its steps.

A task declares the prompt inputs it provides (the persona, plus context such as a focus, a variant or a world
sheet), one or more steps (each a versioned template, the JSON schema of its answer and a parser that validates the
answer into fields or raises `Rejected`), and its typed output columns. The engine (generate.py) runs the steps in
order for every item, `rounds` times (a conversation's turns), and passes each template the task's inputs, the
engine's own (`examples`, `round`) and the earlier steps' fields the step `reads`. Templates are checked against
exactly those names when a task is declared, i.e. when the definitions load: a typo is an error naming the template
and the variable, never a hole in a prompt at run time.

Beside its steps, a task declares what the rest of the platform needs from it, so that a task is one module
(lib/synthesis/tasks/<task>.py): its evaluation(s) (`Evaluation`: a judge rubric, or a stage of its own), its
release (`ReleaseSpec`: the dataset card's categories, the eval columns it carries, the chat messages) and its small
settings (the demo's and the tests' size).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import polars as pl

from persona_hub_dagster.lib import prompts, tables
from persona_hub_dagster.lib.coverage.selection import check_aim
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.llm.types import SamplingParams
from persona_hub_dagster.lib.settings import setting

if TYPE_CHECKING:
    from persona_hub_dagster.lib.evaluation.judge import Rubric
    from persona_hub_dagster.lib.stage import Stage
    from persona_hub_dagster.lib.storage import DeltaStore

PROMPTING_MODES = ("zero_shot", "few_shot", "persona_few_shot")
# What the engine passes every step's template, besides the task's declared inputs and the fields the step reads:
# the rendered demonstrations (empty in zero-shot mode and after the first step) and the round (1-based).
ENGINE_INPUTS = ("examples", "round")


class TemplateInputError(ValueError):
    """A template reads a variable its task does not declare."""


@dataclass(frozen=True)
class SynthesisSettings:
    """What every task takes; a task with settings of its own extends this."""

    personas: int | None = setting(
        200, "Hub personas drawn from the shard; null: every one of them (that the aim selects)."
    )
    samples_per_persona: int = setting(1, "Items asked per persona, each with its own seed.")
    seed: int = setting(0, "Seeds the persona sample and the choice of demonstrations.")
    sampling: str = setting(
        "stratified",
        "stratified: evenly across the coverage map (persona_clusters): one persona from each region in turn, and "
        "within a region from each cluster in turn, so "
        "rare kinds of people are reached; uniform: a uniform sample. Without clusters for the shard, uniform.",
    )
    query: str | None = setting(
        None, "Draw only personas whose embedding is at least min_similarity to this text (e.g. 'healthcare workers')."
    )
    min_similarity: float | None = setting(
        None,
        "The cosine a persona needs to the query; null: the embedding model's own (MiniLM 0.3, its fast model2vec "
        "distillation 0.4: ~0.95 precision, ~0.8 recall on planted kinds).",
    )
    clusters: tuple[int, ...] = setting((), "Draw only from these clusters of persona_clusters (ids; empty: all).")
    where: tuple[str, ...] = setting(
        (),
        "Filters on persona_hub columns, all of which must hold: 'column=value', 'column=v1|v2' or 'column!=value' "
        "(e.g. 'source=expanded_personas', 'hop=1|2', 'relation=write').",
    )
    prompting: str = setting(
        "zero_shot",
        "zero_shot: the persona and the task; few_shot: plus `shots` demonstrations from the task's pool, chosen per "
        "request; persona_few_shot: each demonstration shown with the persona that would have written it (derived "
        "by the `demonstrations` asset, which must be materialized first).",
    )
    shots: int = setting(3, "Demonstrations per request in the few-shot modes.")
    temperature: float | None = setting(None, "Sampling temperature of every step; null: each step's default.")
    max_tokens: int | None = setting(None, "Output tokens of every step; null: each step's default.")

    def __post_init__(self) -> None:
        if self.personas is not None and self.personas < 0 or self.samples_per_persona < 1:
            raise ValueError("personas must be >= 0 (or null) and samples_per_persona >= 1")
        if self.prompting not in PROMPTING_MODES:
            raise ValueError(f"prompting must be one of {PROMPTING_MODES}, not {self.prompting!r}")
        if self.shots < 1:
            raise ValueError("shots must be at least 1")
        check_aim(asdict(self))


@dataclass(frozen=True)
class TaskContext:
    """What a task's prompts and parsers know besides the persona, fixed for a run: the settings, the values of
    the task's declared context inputs, the values stamped on every row, and (for NPCs) the world."""

    settings: Any
    inputs: Mapping[str, str] = field(default_factory=dict)  # template inputs: focus, variant, world, ...
    row: Mapping[str, Any] = field(default_factory=dict)  # columns from the context: focus, variant, world, ...
    world: Any = None
    located: Mapping[str, Any] = field(default_factory=dict)  # columns that say where context came from (not versioned)

    @property
    def version(self) -> str:
        return content_id(json.dumps({"inputs": dict(self.inputs), "row": dict(self.row)}, sort_keys=True))[:12]


def plain_context(settings: Any) -> TaskContext:
    return TaskContext(settings)


@dataclass
class Item:
    """One item on its way through a task's steps."""

    persona_id: str
    persona: str
    sample: int
    demonstrations: list = field(default_factory=list)  # lib.synthesis.demonstrations.Demonstration
    fields: dict[str, Any] = field(default_factory=dict)  # what the steps produced so far
    cluster: int | None = None  # its cluster on the coverage map (persona_clusters), where the shard has one


Parse = Callable[[Any, Item, TaskContext], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    name: str
    template: str | prompts.PromptTemplate  # lib/prompts/<name>.v<N>.jinja, or a template object
    parse: Parse  # the answer (parsed JSON, or the text of a free-text step) -> fields; raises Rejected
    answer_schema: Mapping[str, Any] | Callable[[TaskContext | None], Mapping[str, Any]] | None = None
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.8, max_tokens=320))
    reads: tuple[str, ...] = ()  # fields of earlier steps its template shows (e.g. a tool's spec)
    chat: bool = False  # the request is the conversation so far (the `messages` field) after the system block

    def prompt(self) -> prompts.PromptTemplate:
        return self.template if isinstance(self.template, prompts.PromptTemplate) else prompts.load(self.template)

    def schema(self, context: TaskContext | None) -> Mapping[str, Any] | None:
        """The answer's schema for a run (None: free text). Without a context: the schema any run accepts, which
        demonstrations are checked against."""
        return self.answer_schema(context) if callable(self.answer_schema) else self.answer_schema

    def sampling_for(self, settings: SynthesisSettings) -> SamplingParams:
        return replace(
            self.sampling,
            temperature=self.sampling.temperature if settings.temperature is None else settings.temperature,
            max_tokens=self.sampling.max_tokens if settings.max_tokens is None else settings.max_tokens,
        )


Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a task's items: a judge rubric (lib/evaluation/judge.py builds its stage) or a stage of the
    task's own (a function of the task that returns its `Stage`, e.g. lib/evaluation/math_eval.py's `stage`).
    A task's first evaluation writes eval/<task>; any further one is named and writes eval/<task>_<name>."""

    rubric: Rubric | None = None
    stage: Callable[[SynthesisTask], Stage] | None = None
    name: str | None = None  # only for a second (third, ...) evaluation of a task: its table is eval/<task>_<name>
    runs_programs: bool = False  # runs model-written programs in the sandbox (its asset carries the `python` kind)
    small: Mapping[str, Any] = field(default_factory=dict)  # its settings in the demo and the tests

    def __post_init__(self) -> None:
        if (self.rubric is None) == (self.stage is None):
            raise ValueError(
                "An evaluation is either a judge rubric or a stage of its own, not "
                + ("both: declare two evaluations, the second one named" if self.rubric else "neither")
            )
        if self.name is not None and (not self.name.isidentifier() or self.name == "rejects"):
            raise ValueError(f"An evaluation's name is an identifier other than 'rejects', not {self.name!r}")


@dataclass(frozen=True)
class ReleaseSpec:
    """How release/<task> is built from the task's items that passed eval/<task> (lib/release.py)."""

    chat: Callable[[Mapping[str, Any]], Messages]  # a released row as chat `messages`
    categories: tuple[str, ...] = ("text-generation",)  # the dataset card's task_categories
    eval_columns: tuple[str, ...] = ()  # columns of eval/<task> the release carries (math: the agreed `answer`)
    # More columns per item, by (item_id, shard), that `chat` may read (math: the verified solution), and the tables
    # and columns they come from (the release's column lineage).
    joins: Callable[[DeltaStore], pl.DataFrame] | None = None
    joined_from: tuple[tuple[tables.Table, str], ...] = ()


@dataclass(frozen=True)
class SynthesisTask:
    name: str  # the asset is synthetic/<name>
    description: str
    steps: tuple[Step, ...]
    columns: Mapping[str, pl.DataType]  # the task's typed fields in each row (from its steps or its context)
    inputs: tuple[str, ...] = ("persona",)  # the prompt inputs it provides (the context's inputs and the persona)
    settings: type = SynthesisSettings
    context: Callable[[Any], TaskContext] = plain_context
    rounds: Callable[[Any], int] = lambda settings: 1  # how often the steps run in turn (a conversation's turns)
    pool_filter: Callable[[Mapping[str, Any], Any], bool] | None = None  # which pool entries fit the settings
    text: Callable[[Mapping[str, Any]], str] | None = None  # a row's text, for diversity, grounding, contamination
    evaluations: tuple[Evaluation, ...] = ()  # the first writes eval/<name>
    release: ReleaseSpec | None = None
    small: Mapping[str, Any] | None = None  # its settings in the demo and the tests (a few personas, short answers)

    def item_text(self, row: Mapping[str, Any]) -> str:
        """What an item says, as one text (default: its string columns, one per line)."""
        if self.text is not None:
            return self.text(row)
        return "\n".join(str(row[c]) for c, dtype in self.columns.items() if dtype == pl.String and row.get(c))

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"Task {self.name!r} has no steps")
        further = [e.name for e in self.evaluations[1:]]
        if self.evaluations and self.evaluations[0].name is not None or None in further:
            raise ValueError(
                f"Task {self.name!r}: its first evaluation writes eval/{self.name} and takes no name; every further "
                "one needs a name (its table is eval/<task>_<name>)"
            )
        if len(set(further)) < len(further):
            raise ValueError(f"Task {self.name!r}: two evaluations share a name ({further})")
        for step in self.steps:
            template = step.prompt()
            allowed = {*self.inputs, *ENGINE_INPUTS, *step.reads}
            unknown = sorted(template.variables - allowed)
            if unknown:
                raise TemplateInputError(
                    f"Template {template.name}.v{template.number} (task {self.name!r}, step {step.name!r}) uses "
                    f"{', '.join('{{ ' + v + ' }}' for v in unknown)}, which the task does not declare; declared "
                    f"inputs: {', '.join(sorted(allowed))}"
                )

    @property
    def writes(self) -> tables.StageTables:
        """What its synthesis stage writes: synthetic/<name> and its rejects."""
        return tables.synthetic(
            self.name,
            f"{self.description} One row per item: item_id, the persona_id it was created for (joins persona_hub), "
            f"sample, prompting, demonstration_ids, context_version, {', '.join(self.columns)}, and provenance.",
        )

    @property
    def table(self) -> tables.Table:
        """synthetic/<name>: its items."""
        return self.writes.table

    @property
    def runs_programs(self) -> bool:
        """Whether evaluating it runs model-written programs (in the sandbox)."""
        return any(evaluation.runs_programs for evaluation in self.evaluations)

    def evaluation_names(self) -> list[str]:
        """The name of each evaluation, i.e. its table eval/<name>: the task's own name first."""
        return [self.name, *(f"{self.name}_{e.name}" for e in self.evaluations[1:])]

    @property
    def demonstrated(self) -> Step:
        """The step whose answers the demonstrations show (the first)."""
        return self.steps[0]

    def prompt_version(self) -> str:
        """Every step's template version, in step order: in each row, the item's identity and the code version."""
        return ",".join(dict.fromkeys(step.prompt().version for step in self.steps))

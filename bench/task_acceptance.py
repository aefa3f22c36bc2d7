"""How much of each synthesis task's output is usable, per prompting mode: acceptance rate (items / items asked),
the rejection reasons, and model seconds per item, on the same personas for every task.

Personas: the hub of a storage root (e.g. after `make demo`: shard `sample`), else a built-in list. With the
embedded SmolLM2-135M this measures the validators on a weak model, not the data a real model makes; point
PERSONA_HUB_LLM_* at a served model to measure that.

    .venv/bin/python bench/task_acceptance.py --personas 10 --modes zero_shot few_shot
"""

import argparse
import platform
import time
from collections import Counter
from datetime import date

import polars as pl

from persona_hub_dagster.lib.llm import LLMClient, LLMSettings, open_backend
from persona_hub_dagster.lib.llm.settings import model_identity
from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster.lib.synthesis import generate
from persona_hub_dagster.lib.synthesis.tasks import TASKS
from persona_hub_dagster.lib.tables import PERSONA_HUB

FALLBACK = [
    "A night-shift nurse at a rural hospital who trains new staff and keeps a notebook of medication errors.",
    "A retired civil engineer who restores old stone bridges and writes about local history.",
    "A high-school chemistry teacher in Ohio who coaches the robotics team on a small budget.",
    "A young father of twins who drives an hour to the clinic and keeps a notebook of every vaccination date.",
    "A harbour pilot who guides container ships through fog and trains apprentices.",
    "A beekeeper with six hives who sells honey at the Saturday market and teaches a pollinator class.",
    "A public defender who prepares cases at night and coaches a debate team on weekends.",
    "A wind-turbine technician who climbs 80-metre towers and logs every gearbox fault.",
    "A children's librarian who runs a winter reading challenge and a chess club.",
    "A food-truck owner who cooks Korean tacos and tracks ingredient costs in a spreadsheet.",
]


def personas(root: str | None, shard: str, n: int) -> pl.DataFrame:
    store = DeltaStore(root=root) if root else None
    if store is not None and store.exists(PERSONA_HUB) and store.row_count(PERSONA_HUB, [shard]):
        hub = store.read(PERSONA_HUB, [shard]).select("persona_id", "persona")
    else:
        hub = pl.DataFrame({"persona_id": [f"p{i}" for i in range(len(FALLBACK))], "persona": FALLBACK})
    return hub.head(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--personas", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["zero_shot", "few_shot"], choices=["zero_shot", "few_shot"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--root", help="a storage root whose persona_hub supplies the personas")
    parser.add_argument("--shard", default="sample")
    args = parser.parse_args()
    hub = personas(args.root, args.shard, args.personas)
    settings = LLMSettings.from_env()
    print(f"# {date.today()} · {platform.machine()} · model {model_identity(settings)} · {hub.height} personas")
    print("| task | mode | asked | items | acceptance | s/item asked | rejection reasons |")
    print("|---|---|---:|---:|---:|---:|---|")
    with open_backend(settings) as backend:
        for name in args.tasks:
            task = TASKS[name]
            for mode in args.modes:
                extra = {"turns": 2} if name == "conversations" else {}
                chosen = task.settings(prompting=mode, personas=None, **extra)
                started = time.perf_counter()
                output = generate.synthesize(task, hub, LLMClient(backend), chosen, shard="bench", run_id="bench")
                seconds = time.perf_counter() - started
                reasons = Counter(r["reason"].split(":")[0] for r in output.rejects)
                shown = ", ".join(f"{r} {c}" for r, c in reasons.most_common())
                print(
                    f"| {name} | {mode} | {hub.height} | {len(output.rows)} | {len(output.rows) / hub.height:.0%} "
                    f"| {seconds / hub.height:.1f} | {shown or '-'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

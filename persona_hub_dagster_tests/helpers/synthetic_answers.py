"""Good answers for every synthesis task's steps, written from the request the way a model would (grounded in the
prompt), and the personas they are asked about: the scripted model of test_synthesis_tasks and test_eval_report.
A task without an answer here gets one of its own demonstrations, about the persona."""

import json

PERSONAS = [
    "A harbour pilot in Rotterdam who guides container ships through fog and trains apprentices.",
    "A pastry chef who runs a night bakery and experiments with sourdough croissants.",
    "A tax lawyer who volunteers at a legal aid clinic for small farmers.",
    "A school librarian who organizes a chess club and a reading challenge every winter.",
]


def npc_answer(**changes) -> dict:
    answer = {
        "name": "Mira Holt",
        "role": "ferry pilot",
        "faction": "The Tide Court",
        "location": "Brinehold",
        "backstory": "Mira guides cargo boats through the lagoon's shifting channels.",
        "personality": "Calm, observant, blunt with fools.",
        "dialogue": ["Mind the third buoy.", "Fog's coming in; we wait."],
        "quest_hook": "A buoy has been moved on purpose, and Mira wants to know by whom.",
    }
    return {**answer, **changes}


SPEC = {
    "name": "split_bill",
    "description": "Split a bill between people with a tip.",
    "parameters": {
        "type": "object",
        "properties": {
            "total": {"type": "number", "description": "the bill"},
            "people": {"type": "integer", "description": "how many share it"},
        },
        "required": ["total", "people"],
    },
    "returns": "Each person's share.",
    "example_arguments": {"total": 100, "people": 4},
}
GOOD_CODE = "import math\n\ndef split_bill(total, people):\n    return math.ceil(total * 100 / people) / 100\n"


def good_answer(request) -> str:
    """A valid answer for any task's step, written from the request (so it is grounded in the prompt)."""
    step = request.request_id.split(":")[2]
    persona = request.messages[-1]["content"].split("<persona>\n", 1)[-1].split("\n</persona>", 1)[0][:60]
    answers = {
        "problem": {
            "problem": f"{persona}: a crate holds 24 jars of 0.75 kg each; how many kilograms do 7 crates weigh?",
            "question": f"{persona} must order three tasks A, B, C so that B is after A and C is not last. "
            "Which order works?",
            "answer": "A, C, B.",
            "justification": "C cannot be last and B must follow A.",
        },
        "instruction": {"instruction": f"As {persona}, help me plan my week."},
        "user": {"message": f"As {persona}, question number {request.request_id.split(':')[3]}?"},
        "article": {"title": f"What {persona} knows", "body": " ".join(["Facts about the trade."] * 40)},
        "character": npc_answer(name=persona[:30]),
        "spec": SPEC,
        "code": {"code": GOOD_CODE},
    }
    if step == "assistant":
        return f"Answer to turn {request.request_id.split(':')[3]}."
    if step not in answers:  # a task written after these answers: one of its own demonstrations
        return json.dumps(demonstrated_answer(step, request.request_id, persona))
    wanted = request.json_schema["properties"]  # math and reasoning both call their step "problem"
    return json.dumps({key: value for key, value in answers[step].items() if key in wanted})


def demonstrated_answer(step: str, request_id: str, persona: str) -> dict:
    """For a task's first step: an entry of its demonstration pool (chosen by the request), its first text field
    opened with the persona, so that it is about the persona and differs from persona to persona."""
    from persona_hub_dagster.lib.ids import content_id
    from persona_hub_dagster.lib.synthesis import demonstrations
    from persona_hub_dagster.lib.synthesis.tasks import TASKS

    task = next(t for t in TASKS.values() if t.demonstrated.name == step)
    pool = demonstrations.load_pool(task).demonstrations
    fields = dict(pool[int(content_id(request_id)[:8], 16) % len(pool)].fields)
    first = next(key for key, value in fields.items() if isinstance(value, str))
    return {**fields, first: f"As {persona}: {fields[first]}"}

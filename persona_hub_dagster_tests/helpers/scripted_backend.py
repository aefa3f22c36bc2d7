"""A scripted backend for testing the client's parsing, retries and failure handling: every answer is decided by
a function of the request. (Stages themselves are tested against the real embedded model.)"""

from collections.abc import Callable, Sequence

from persona_hub_dagster.lib.llm.types import Completion, LLMRequest


class ScriptedBackend:
    name = "scripted"

    def __init__(self, answer: Callable[[LLMRequest], Completion], model: str = "script-v1"):
        self.answer = answer
        self.model = model
        self.calls: list[LLMRequest] = []
        self.batches: list[int] = []

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.model}"

    def complete(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        self.batches.append(len(requests))
        self.calls.extend(requests)
        return [self.answer(r) for r in requests]

    def close(self) -> None:
        pass

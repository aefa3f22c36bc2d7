"""Choosing and opening a backend from configuration alone (never by editing code).

PERSONA_HUB_LLM_BACKEND   llama_cpp (default) | openai | vllm
PERSONA_HUB_LLM_MODEL     llama_cpp: a local .gguf (default: the packaged SmolLM2-135M-Instruct);
                          openai/vllm: the served model name (openai: default the server's first model)
PERSONA_HUB_LLM_BASE_URL  openai: required; vllm: an existing endpoint, or unset to start `vllm serve` here
PERSONA_HUB_LLM_API_KEY   the key itself, read at call time, never stored in configuration
PERSONA_HUB_LLM_MAX_IN_FLIGHT  openai/vllm: requests in flight at once (default 256; the window adapts to 429s)
PERSONA_HUB_LLM_TOKEN_BUDGET   tokens one run's calls may spend (the `llm` resource's token_budget; default none)
PERSONA_HUB_LLM_SPECIAL_TOKENS chat control tokens that content may never form in a prompt, a JSON list (default:
                               CHAT_TEMPLATE_TOKENS; `[]`: none); the embedded model adds its own from its vocabulary
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_type_hints

from persona_hub_dagster.lib.llm.backends.llama_cpp import LlamaCppBackend
from persona_hub_dagster.lib.llm.backends.managed_server import ManagedServer, free_port, vllm_serve_command
from persona_hub_dagster.lib.llm.backends.openai_compatible import API_KEY_ENV, OpenAICompatibleBackend
from persona_hub_dagster.lib.llm.client import Backend

BACKENDS = ("llama_cpp", "openai", "vllm")
# The generator's variables are declared on LLMSettings' fields (ENV, below, lists them). The judge of the evaluation
# stages: the same model unless these name another (a stronger model judging a cheaper one is the usual set-up); each
# one set overrides the generator's.
JUDGE_ENV = {
    "backend": "PERSONA_HUB_JUDGE_BACKEND",
    "model": "PERSONA_HUB_JUDGE_MODEL",
    "base_url": "PERSONA_HUB_JUDGE_BASE_URL",
}


JUDGE_API_KEY_ENV = "PERSONA_HUB_JUDGE_API_KEY"
TOKEN_BUDGET_ENV = "PERSONA_HUB_LLM_TOKEN_BUDGET"
# More endpoints a run may choose, as JSON: {"name": {"base_url": "https://...", "api_key_env": "VAR"}}.
ENDPOINTS_ENV = "PERSONA_HUB_LLM_ENDPOINTS"


class LLMConfigError(ValueError):
    """A configuration that cannot work, with what to set instead."""


# Content never speaks as a role: every text, persona, item or demonstration a prompt template inserts has these
# markers neutralized (lib/prompts.neutralize), so a crawled page holding `<|im_end|><|im_start|>system ...` cannot
# open a turn. A served model's tokenizer cannot be read from here, so this is a conservative list of the common chat
# formats; the embedded llama.cpp model neutralizes its own control tokens too, read from its GGUF vocabulary.
SPECIAL_TOKENS_ENV = "PERSONA_HUB_LLM_SPECIAL_TOKENS"
CHAT_TEMPLATE_TOKENS = (
    # ChatML (SmolLM2, Qwen, many fine-tunes)
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    # Llama 3
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    # Gemma
    "<start_of_turn>",
    "<end_of_turn>",
    # Mistral / Llama 2
    "[INST]",
    "[/INST]",
    # Phi
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    # SentencePiece sequence markers
    "<s>",
    "</s>",
)


def special_tokens() -> tuple[str, ...]:
    """The markers content may not form: PERSONA_HUB_LLM_SPECIAL_TOKENS (a JSON list of strings, which replaces the
    built-in list; `[]` for none) or CHAT_TEMPLATE_TOKENS. Read at each use, parsed once per value."""
    return _parse_special_tokens(os.environ.get(SPECIAL_TOKENS_ENV) or None)


@functools.lru_cache(maxsize=8)
def _parse_special_tokens(value: str | None) -> tuple[str, ...]:
    if value is None:
        return CHAT_TEMPLATE_TOKENS
    try:
        tokens = json.loads(value)
    except json.JSONDecodeError as exc:
        raise LLMConfigError(
            f'{SPECIAL_TOKENS_ENV} must be a JSON list of strings, like ["<|im_start|>", "<|im_end|>"]: {exc}'
        ) from exc
    if not isinstance(tokens, list) or not all(isinstance(t, str) and len(t) >= 2 for t in tokens):
        raise LLMConfigError(
            f"{SPECIAL_TOKENS_ENV} must be a JSON list of strings of at least 2 characters (a one-character marker "
            f'cannot be neutralized), like ["<|im_start|>", "<|im_end|>"]; it is {value!r}'
        )
    return tuple(dict.fromkeys(tokens))


def configured_endpoints() -> dict[str, str | None]:
    """{endpoint URL: the variable holding its key (None: no key)}: the deployment's endpoints, from the environment
    only. Run config can choose among them (a `base_url`), never add one: a key is bound to its endpoint here."""
    endpoints: dict[str, str | None] = {}
    for url_variable, key_variable in ((ENV["base_url"], API_KEY_ENV), (JUDGE_ENV["base_url"], JUDGE_API_KEY_ENV)):
        if os.environ.get(url_variable):
            endpoints.setdefault(_endpoint(os.environ[url_variable]), key_variable)
    try:
        extra = json.loads(os.environ.get(ENDPOINTS_ENV) or "{}")
        for spec in extra.values():
            endpoints[_endpoint(spec["base_url"])] = spec.get("api_key_env")
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise LLMConfigError(
            f'{ENDPOINTS_ENV} must be JSON like {{"name": {{"base_url": "...", "api_key_env": "VAR"}}}}: {exc}'
        ) from exc
    return endpoints


def credentials_for(base_url: str) -> str | None:
    """The variable whose key may be sent to `base_url`, or None (send none). A URL the deployment does not configure
    is refused while any key is configured: otherwise anyone who can launch a run could send a key to a server of
    their own by setting `base_url` in the run config."""
    endpoints = configured_endpoints()
    if _endpoint(base_url) in endpoints:
        return endpoints[_endpoint(base_url)]
    keys = [v for v in {API_KEY_ENV, JUDGE_API_KEY_ENV, *endpoints.values()} if v and os.environ.get(v)]
    if keys:
        raise LLMConfigError(
            f"{base_url} is not an endpoint this deployment configures ({', '.join(sorted(endpoints)) or 'none'}), "
            f"and API keys are configured ({', '.join(sorted(keys))}): a run can choose among the configured "
            f"endpoints but not send a key to a new URL. Add the endpoint to {ENDPOINTS_ENV} (or "
            f"{ENV['base_url']}) in the deployment's environment."
        )
    return None


def _endpoint(url: str) -> str:
    return url.strip().rstrip("/")


def llm_setting(default: Any, doc: str, *, env: str | None = None) -> Any:
    """A field of LLMSettings: like `lib.settings.setting(default, doc)`, and the environment variable (if any) that
    sets its default in a deployment. The `llm` and `judge` resources' run config is built from these fields."""
    return field(default=default, metadata={"doc": doc, "env": env})


@dataclass(frozen=True)
class LLMSettings:
    backend: str = llm_setting(
        "llama_cpp",
        "llama_cpp (embedded CPU model, default) | openai (any OpenAI-compatible server) | vllm.",
        env="PERSONA_HUB_LLM_BACKEND",
    )
    model: str | None = llm_setting(
        None,
        "llama_cpp: path of a .gguf (default: packaged SmolLM2-135M-Instruct); openai/vllm: model name.",
        env="PERSONA_HUB_LLM_MODEL",
    )
    base_url: str | None = llm_setting(
        None,
        "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. vllm without it: start `vllm serve`.",
        env="PERSONA_HUB_LLM_BASE_URL",
    )
    # llama_cpp (in-process)
    n_ctx: int = llm_setting(4096, "llama_cpp context length (prompt + output tokens).")
    n_threads: int | None = llm_setting(
        None,
        "llama_cpp threads; null: the cores idle when a stage starts (llama_cpp.free_cores). More threads than idle "
        "cores collapse throughput when another process uses a core.",
        env="PERSONA_HUB_LLM_THREADS",
    )
    reuse_prefix: bool = llm_setting(
        True,
        "llama_cpp: reuse the KV cache of shared prompt prefixes (1.6x faster here). False: each request is "
        "bit-reproducible on its own, whatever ran before it.",
    )
    # openai / vllm over HTTP
    max_in_flight: int = llm_setting(
        256,
        "openai/vllm: requests in flight at once (a window refilled as answers arrive; it halves on 429s and grows "
        "back). 256 is vLLM's default max_num_seqs.",
        env="PERSONA_HUB_LLM_MAX_IN_FLIGHT",
    )
    timeout_s: float = llm_setting(120.0, "Per-request timeout for HTTP backends.")
    max_retries: int = llm_setting(4, "Transport retries (429/5xx/connection) with backoff.")
    # vllm, when this process starts the server
    tensor_parallel_size: int = llm_setting(1, "vllm serve --tensor-parallel-size")
    max_num_seqs: int = llm_setting(256, "vllm serve --max-num-seqs")
    gpu_memory_utilization: float = llm_setting(0.90, "vllm serve --gpu-memory-utilization")
    max_model_len: int | None = llm_setting(None, "vllm serve --max-model-len")
    server_startup_timeout_s: float = llm_setting(
        900.0, "vllm without a base_url: seconds the started `vllm serve` has to become healthy."
    )
    # validation retries of invalid structured outputs (LLMClient)
    max_attempts: int = llm_setting(3, "Attempts per request when a structured output is invalid.")

    @classmethod
    def from_env(cls, *, judge: bool = False, **overrides) -> LLMSettings:
        """The generator's settings from PERSONA_HUB_LLM_*; with `judge`, PERSONA_HUB_JUDGE_* override them."""
        values = {f.name: env_default(f.name, judge=judge) for f in fields(cls)}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LLMConfigError(f"Unknown LLM backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def describe(self) -> dict[str, object]:
        """For logs and metadata: the settings, with no secret in them (the key stays in its variable)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELDS = {f.name: f for f in fields(LLMSettings)}
_HINTS = get_type_hints(LLMSettings)
# The variable that sets each setting's default, by setting: {"backend": "PERSONA_HUB_LLM_BACKEND", ...}.
ENV = {name: f.metadata["env"] for name, f in _FIELDS.items() if f.metadata["env"]}


def env_variables(name: str, *, judge: bool = False) -> tuple[str, ...]:
    """The variables that set setting `name`'s default, the first one set winning (the judge's own, then the
    generator's)."""
    variables = (JUDGE_ENV.get(name),) if judge else ()
    return tuple(v for v in (*variables, ENV.get(name)) if v)


def env_default(name: str, *, judge: bool = False) -> Any:
    """Setting `name`'s default in this deployment: from its variables (a count is checked), else LLMSettings'.
    Read at each call, so a resource built later sees the environment of then."""
    for variable in env_variables(name, judge=judge):
        if os.environ.get(variable):
            is_count = int in (_HINTS[name], *get_args(_HINTS[name]))
            return env_count(variable) if is_count else os.environ[variable]
    return _FIELDS[name].default


def setting_description(name: str, *, judge: bool = False) -> str:
    """Setting `name`'s doc, with the variables that set its default: what its run config field says."""
    doc, default = _FIELDS[name].metadata["doc"], _FIELDS[name].default
    variables = env_variables(name, judge=judge)
    if not variables:
        return doc
    return f"{doc} Default: ${', else $'.join(variables)}, else {'null' if default is None else default}."


ServeCommand = Callable[[LLMSettings, int], list[str]]


def vllm_command(settings: LLMSettings, port: int) -> list[str]:
    return vllm_serve_command(
        settings.model,
        port=port,
        tensor_parallel_size=settings.tensor_parallel_size,
        max_num_seqs=settings.max_num_seqs,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
    )


@contextlib.contextmanager
def open_backend(
    settings: LLMSettings, *, serve_command: ServeCommand = vllm_command, health_path: str = "/health"
) -> Iterator[Backend]:
    """The configured backend, closed (and its managed server stopped) when the block exits, however it exits.

    `serve_command`/`health_path` describe the server started for `vllm` without a base_url; they exist so that the
    same machinery can be exercised with another OpenAI-compatible server where vLLM cannot run (tests use
    llama.cpp's server).
    """
    if settings.backend == "llama_cpp":
        backend: Backend = LlamaCppBackend(
            settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads, reuse_prefix=settings.reuse_prefix
        )
        try:
            yield backend
        finally:
            backend.close()
        return

    if settings.backend == "openai" or settings.base_url:
        if not settings.base_url:
            raise LLMConfigError(
                "The openai backend needs PERSONA_HUB_LLM_BASE_URL (e.g. http://127.0.0.1:8000/v1 for `vllm serve`, "
                "http://127.0.0.1:11434/v1 for Ollama, https://api.openai.com/v1)."
            )
        backend = _http_backend(settings, settings.base_url)
        try:
            yield backend
        finally:
            backend.close()
        return

    # vllm without an endpoint: start `vllm serve` for the duration of the block.
    if not settings.model:
        raise LLMConfigError("The vllm backend needs PERSONA_HUB_LLM_MODEL (a Hugging Face id or a local path).")
    command = serve_command(settings, free_port())
    if serve_command is vllm_command and shutil.which("vllm") is None:
        raise LLMConfigError(
            "vllm is not installed here: install the gpu extra (pip install 'persona-hub-dagster[gpu]') on a GPU "
            "machine, or point PERSONA_HUB_LLM_BASE_URL at a running vLLM server."
        )
    port = int(command[command.index("--port") + 1])
    with ManagedServer(
        command, port=port, health_path=health_path, startup_timeout_s=settings.server_startup_timeout_s
    ) as server:
        backend = _http_backend(settings, server.base_url)
        try:
            yield backend
        finally:
            backend.close()


def _http_backend(settings: LLMSettings, base_url: str) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(
        base_url,
        settings.model,
        # The key bound to this endpoint by the deployment (none for a server this run started itself).
        api_key_env=credentials_for(base_url) if settings.base_url else None,
        max_in_flight=settings.max_in_flight,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        name="vllm" if settings.backend == "vllm" else "openai",
    )


def env_count(variable: str, default: int | None = None) -> int | None:
    """A whole number of at least 1 from the environment (`default` when unset), or a clear error naming it."""
    value = os.environ.get(variable)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise LLMConfigError(f"{variable} must be a whole number, at least 1; it is {value!r}")
    return number


def model_identity(settings: LLMSettings) -> str:
    """The configured model's identity without loading it (for code versions at definition load): the same string
    the opened backend reports where it can be known up front."""
    if settings.backend == "llama_cpp":
        from persona_hub_dagster.lib.llm.backends.llama_cpp import ModelNotFound, resolve_gguf

        try:
            path = resolve_gguf(settings.model)
        except ModelNotFound:
            return f"llama_cpp:{settings.model or 'smollm2-135m'}"
        return f"llama_cpp:{path.name}:{path.stat().st_size}"
    return f"{'vllm' if settings.backend == 'vllm' else 'openai'}:{settings.model or 'default'}"

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
from dataclasses import dataclass, fields

from persona_hub_dagster.lib.llm.backends.llama_cpp import LlamaCppBackend
from persona_hub_dagster.lib.llm.backends.managed_server import ManagedServer, free_port, vllm_serve_command
from persona_hub_dagster.lib.llm.backends.openai_compatible import API_KEY_ENV, OpenAICompatibleBackend
from persona_hub_dagster.lib.llm.client import Backend

BACKENDS = ("llama_cpp", "openai", "vllm")
ENV = {
    "backend": "PERSONA_HUB_LLM_BACKEND",
    "model": "PERSONA_HUB_LLM_MODEL",
    "base_url": "PERSONA_HUB_LLM_BASE_URL",
    "max_in_flight": "PERSONA_HUB_LLM_MAX_IN_FLIGHT",
    "n_threads": "PERSONA_HUB_LLM_THREADS",
}
# The judge of the evaluation stages: the same model unless these name another (a stronger model judging a cheaper
# one is the usual set-up); each one set overrides the generator's.
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


@dataclass(frozen=True)
class LLMSettings:
    backend: str = "llama_cpp"
    model: str | None = None
    base_url: str | None = None
    # llama_cpp (in-process)
    n_ctx: int = 4096
    n_threads: int | None = None  # None: the cores idle when the backend opens (llama_cpp.free_cores)
    reuse_prefix: bool = True  # KV reuse of shared prompt prefixes; False: every request bit-reproducible alone
    # openai / vllm over HTTP
    max_in_flight: int = 256  # the streaming window (vLLM's default max_num_seqs); halves on 429s, grows back
    timeout_s: float = 120.0
    max_retries: int = 4
    # vllm, when this process starts the server
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.90
    max_model_len: int | None = None
    server_startup_timeout_s: float = 900.0
    # validation retries of invalid structured outputs (LLMClient)
    max_attempts: int = 3

    @classmethod
    def from_env(cls, *, judge: bool = False, **overrides) -> LLMSettings:
        """The generator's settings from PERSONA_HUB_LLM_*; with `judge`, PERSONA_HUB_JUDGE_* override them."""
        values: dict[str, object] = {name: os.environ[var] for name, var in ENV.items() if os.environ.get(var)}
        if judge:
            values.update({name: os.environ[var] for name, var in JUDGE_ENV.items() if os.environ.get(var)})
        for name in ("max_in_flight", "n_threads"):
            if name in values:
                values[name] = env_count(ENV[name])
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LLMConfigError(f"Unknown LLM backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def describe(self) -> dict[str, object]:
        """For logs and metadata: the settings, with no secret in them (the key stays in its variable)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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

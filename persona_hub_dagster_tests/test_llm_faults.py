"""Fault injection for the OpenAI-compatible backend: a small local HTTP server (helpers/fault_server.py) that
answers 429 (with Retry-After), 500, slowly, with malformed JSON, or with truncated output, and records what it was
sent."""

import json
import logging
import time

import pytest

from persona_hub_dagster.lib.llm import (
    BackendFailure,
    LLMClient,
    LLMConfigError,
    LLMRequest,
    LLMSettings,
    SamplingParams,
    open_backend,
)
from persona_hub_dagster.lib.llm.backends.openai_compatible import OpenAICompatibleBackend
from persona_hub_dagster_tests.helpers.fault_server import FaultServer

SCHEMA = {"type": "object", "properties": {"persona": {"type": "string"}}, "required": ["persona"]}


@pytest.fixture
def fault_server(request):
    servers = []

    def start(*behaviours) -> FaultServer:
        servers.append(FaultServer(*behaviours))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def backend_for(server: FaultServer, **kwargs) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(server.base_url, "scripted", **{"max_retries": 3, "timeout_s": 10, **kwargs})


def ask(backend, **kwargs):
    return backend.complete([LLMRequest.chat("hello", sampling=SamplingParams(max_tokens=16), **kwargs)])[0]


def test_429_is_retried_after_the_servers_retry_after(fault_server):
    server = fault_server(("status", 429, {"Retry-After": "1"}), ("ok",))
    result = ask(backend_for(server))
    assert result.error is None and result.prompt_tokens == 7 and result.completion_tokens == 3
    first, second = server.requests
    assert second["t"] - first["t"] >= 0.95  # waited as told, not the default 0.5 s backoff


def test_5xx_is_retried_with_growing_backoff_then_reported(fault_server):
    server = fault_server(("status", 500), ("status", 503), ("ok",))
    assert ask(backend_for(server)).error is None
    gaps = [b["t"] - a["t"] for a, b in zip(server.requests, server.requests[1:], strict=False)]
    assert len(gaps) == 2 and gaps[1] > gaps[0] * 1.2  # exponential, with at most 25% jitter

    always_failing = fault_server(*[("status", 502)] * 10)
    result = ask(backend_for(always_failing, max_retries=2))
    assert result.error.startswith("http_502") and len(always_failing.requests) == 3


def test_timeouts_are_bounded_and_reported(fault_server):
    server = fault_server(("sleep", 3), ("sleep", 3))
    started = time.monotonic()
    result = ask(backend_for(server, timeout_s=0.5, max_retries=1))
    assert result.error.startswith("timeout") and time.monotonic() - started < 3.5
    assert len(server.requests) == 2


def test_a_malformed_body_is_asked_again_then_stops_the_batch(fault_server):
    server = fault_server(("malformed",), ("ok",))
    responses = LLMClient(backend_for(server)).generate([LLMRequest.chat("hi", json_schema=SCHEMA)])
    assert responses[0].ok and responses[0].attempts == 2

    only_malformed = fault_server(*[("malformed",)] * 10)
    client = LLMClient(backend_for(only_malformed, max_retries=0), max_attempts=2)
    with pytest.raises(BackendFailure, match="malformed_response"):
        client.generate([LLMRequest.chat("hi")])


def test_truncated_output_becomes_a_rejection_that_keeps_the_text(fault_server):
    partial = '{"persona": "a retired sailor who'
    server = fault_server(*[("content", partial, "length")] * 3)
    response = LLMClient(backend_for(server), max_attempts=3).generate([LLMRequest.chat("hi", json_schema=SCHEMA)])[0]
    assert response.error.startswith("truncated") and response.text == partial and response.attempts == 3


def test_connection_errors_are_reported_not_raised():
    backend = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "none", max_retries=1, timeout_s=2)
    assert ask(backend).error.startswith("connection")


def test_concurrency_is_bounded(fault_server):
    server = fault_server(*[("ok", 0.3)] * 10)
    backend = backend_for(server, max_in_flight=3)
    results = backend.complete([LLMRequest.chat(f"q{i}") for i in range(10)])
    assert all(r.error is None for r in results)
    assert server.max_in_flight == 3


def test_the_api_key_is_sent_and_never_shown(fault_server, monkeypatch, caplog):
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("PERSONA_HUB_LLM_API_KEY", secret)
    server = fault_server(("status", 500), ("ok",))
    caplog.set_level(logging.DEBUG)
    backend = backend_for(server)
    client = LLMClient(backend)
    response = client.generate([LLMRequest.chat("hi", json_schema=SCHEMA)])[0]

    assert all(r["headers"]["authorization"] == f"Bearer {secret}" for r in server.requests)
    settings = LLMSettings.from_env(backend="openai", base_url=server.base_url, model="scripted")
    visible = [
        repr(settings.describe()),
        backend.identity,
        repr(response),
        repr(client.usage.as_metadata()),
        caplog.text,
    ]
    assert not any(secret in text for text in visible)

    from persona_hub_dagster.defs.models import LLMResource

    resource = LLMResource(backend="openai", base_url=server.base_url, model="scripted")
    # Neither the key nor which variable holds it is run config: the deployment binds keys to endpoints.
    assert secret not in repr(resource) and "api_key_env" not in type(resource).model_fields


def test_a_run_cannot_point_the_key_at_a_new_url(fault_server, monkeypatch):
    """The probe: run config sets `base_url` to a listener of its own; the configured key must never reach it."""
    secret = "sk-test-very-secret-0123456789"
    legit, listener = fault_server(), fault_server()
    monkeypatch.setenv("PERSONA_HUB_LLM_API_KEY", secret)
    monkeypatch.setenv("PERSONA_HUB_LLM_BASE_URL", legit.base_url)
    with pytest.raises(LLMConfigError, match="not an endpoint this deployment configures"):
        with open_backend(LLMSettings.from_env(backend="openai", base_url=listener.base_url, model="scripted")):
            pass
    assert listener.requests == []

    # A run can choose among configured endpoints, each with its own key.
    other_key = "sk-other-endpoint-key"
    monkeypatch.setenv("PARTNER_KEY", other_key)
    monkeypatch.setenv(
        "PERSONA_HUB_LLM_ENDPOINTS",
        json.dumps({"partner": {"base_url": listener.base_url, "api_key_env": "PARTNER_KEY"}}),
    )
    with open_backend(LLMSettings.from_env(backend="openai", base_url=listener.base_url, model="scripted")) as backend:
        LLMClient(backend).generate([LLMRequest.chat("hi", json_schema=SCHEMA)])
    assert [r["headers"]["authorization"] for r in listener.requests] == [f"Bearer {other_key}"]
    with open_backend(LLMSettings.from_env(backend="openai", model="scripted")) as backend:  # the default endpoint
        LLMClient(backend).generate([LLMRequest.chat("hi", json_schema=SCHEMA)])
    assert legit.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"


def test_without_any_key_a_run_may_use_a_local_server_of_its_choice(fault_server, monkeypatch):
    for variable in ("PERSONA_HUB_LLM_API_KEY", "PERSONA_HUB_JUDGE_API_KEY", "PERSONA_HUB_LLM_ENDPOINTS"):
        monkeypatch.delenv(variable, raising=False)
    server = fault_server()
    with open_backend(LLMSettings.from_env(backend="openai", base_url=server.base_url, model="scripted")) as backend:
        assert LLMClient(backend).generate([LLMRequest.chat("hi", json_schema=SCHEMA)])[0].ok
    assert server.requests[0]["headers"]["authorization"] == "Bearer not-needed"

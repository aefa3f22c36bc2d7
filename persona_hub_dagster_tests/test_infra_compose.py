"""The local multi-container stack (infra/docker-compose.yml) and its instance file, checked as files.

The stack itself needs Docker and images from a registry, which tests do not have; what can drift silently is checked
here: the compose instance file against the production one, the services against the image's entrypoint and the
environment the instance files read.
"""

from __future__ import annotations

import os
import re

import pytest
import sqlalchemy
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster_postgres.utils import pg_url_from_config

from persona_hub_dagster_tests.conftest import REPO

INFRA = REPO / "infra"
PRODUCTION_INSTANCE = INFRA / "dagster.yaml"
COMPOSE_INSTANCE = INFRA / "compose" / "dagster.yaml"
COMPOSE = INFRA / "docker-compose.yml"
DAGSTER_SERVICES = ("code-server", "daemon", "webserver")
# The deployment's environment contract (every Dagster process gets all of it).
CONTRACT_ENV = {
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
    "DAGSTER_MAX_CONCURRENT_RUNS",
    "DAGSTER_CODE_SERVER_HOST",
    "DAGSTER_CODE_SERVER_PORT",
    "PERSONA_HUB_BUCKET",
    "PERSONA_HUB_LOG_PREFIX",
    "PERSONA_HUB_STORAGE",
    "PERSONA_HUB_SOURCE",
    "PERSONA_HUB_LLM_BASE_URL",
    "PERSONA_HUB_LLM_MODEL",
    "PERSONA_HUB_POOL_LIMITS",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
}


def sections(text: str) -> tuple[str, dict[str, str]]:
    """The file's header comment, and each top-level key's text (its comment lines above it included)."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    header, pending, blocks, current = "".join(lines[:start]), [], {}, None
    for line in lines[start:]:
        key = re.match(r"^([A-Za-z_][\w-]*):", line)
        if key:
            current = key.group(1)
            blocks[current] = "".join(pending) + line
            pending = []
        elif line.startswith((" ", "\t")) and current is not None:
            blocks[current] += line
        else:  # comments and blank lines belong to the next key
            pending.append(line)
    assert not "".join(pending).strip(), "trailing comments after the last key"
    return header, blocks


def test_compose_instance_differs_from_production_only_in_the_run_launcher():
    _, production = sections(PRODUCTION_INSTANCE.read_text())
    _, compose = sections(COMPOSE_INSTANCE.read_text())
    assert list(compose) == list(production), "the two instance files must have the same top-level keys, in order"
    drifted = [key for key in production if key != "run_launcher" and compose[key] != production[key]]
    assert not drifted, (
        f"infra/compose/dagster.yaml differs from infra/dagster.yaml in {drifted}: copy the production block there "
        "(only run_launcher may differ)"
    )
    assert yaml.safe_load(production["run_launcher"])["run_launcher"]["class"] == "EcsRunLauncher"
    assert yaml.safe_load(compose["run_launcher"])["run_launcher"] == {
        "module": "dagster.core.launcher",
        "class": "DefaultRunLauncher",
    }


@pytest.mark.parametrize("path", [PRODUCTION_INSTANCE, COMPOSE_INSTANCE], ids=["production", "compose"])
def test_instance_file_is_valid_for_this_dagster(path, monkeypatch, tmp_path):
    """The instance file passes Dagster's own validation (schema, concurrency settings), its Postgres URL names a
    driver that is installed, and its run coordinator and launcher can be built (no database is contacted)."""
    for name in env_references(yaml.safe_load(path.read_text())):
        monkeypatch.setenv(name, "5432" if name.endswith("PORT") else "10" if name.endswith("RUNS") else "x")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config, _ = dagster_instance_config(str(path.parent), path.name)
    # SQLAlchemy imports the URL's driver (DBAPI) when the engine is created; a missing one fails here.
    postgres = resolve_env(config["storage"]["postgres"])
    sqlalchemy.create_engine(pg_url_from_config(postgres)).dispose()
    (tmp_path / "dagster.yaml").write_text(path.read_text())
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.run_coordinator is not None and ref.run_launcher is not None


def resolve_env(node):
    """The instance file's values with every `{env: NAME}` replaced by the variable's value."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return os.environ[node["env"]]
        return {key: resolve_env(value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_env(value) for value in node]
    return node


def env_references(node) -> set[str]:
    """Every `{env: NAME}` of an instance file."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_references(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_references(v) for v in node)) if node else set()
    return set()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dagster_services_share_one_image_and_the_whole_environment(compose):
    services = compose["services"]
    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    needed = CONTRACT_ENV | env_references(production) | set(production["run_launcher"]["config"]["env_vars"])
    for name in (*DAGSTER_SERVICES, "create-bucket"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}, name
        assert service["image"] == services["code-server"]["image"], name
        assert needed <= set(service["environment"]), f"{name} lacks {sorted(needed - set(service['environment']))}"
    for name in DAGSTER_SERVICES:
        assert services[name]["volumes"] == ["./compose/dagster.yaml:/opt/dagster/home/dagster.yaml:ro"], name
    assert (INFRA / "Dockerfile").is_file() and (REPO / ".dockerignore").is_file()


def test_services_run_the_entrypoints_roles_in_order(compose):
    services = compose["services"]
    entrypoint = (INFRA / "entrypoint.sh").read_text()
    for role in DAGSTER_SERVICES:
        assert services[role]["command"] == [role]
        assert re.search(rf"^\s*{role}\)", entrypoint, re.MULTILINE), f"infra/entrypoint.sh has no {role} role"
    env = services["code-server"]["environment"]
    assert (env["DAGSTER_CODE_SERVER_HOST"], env["DAGSTER_CODE_SERVER_PORT"]) == ("code-server", "4000")
    # Runs fail closed when the program sandbox cannot start (a laptop's default, auto, would evaluate without them).
    assert env["PERSONA_HUB_SANDBOX"] == "${PERSONA_HUB_SANDBOX:-bwrap}"
    assert services["webserver"]["ports"] == ["${DAGSTER_WEBSERVER_PUBLISHED_PORT:-3000}:3000"]
    # Postgres and the bucket first; the daemon (which migrates the schema) before the webserver.
    assert services["code-server"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    for name in ("daemon", "webserver"):
        depends = services[name]["depends_on"]
        assert depends["postgres"] == depends["code-server"] == {"condition": "service_healthy"}, name
    assert services["webserver"]["depends_on"]["daemon"] == {"condition": "service_healthy"}
    assert services["create-bucket"]["depends_on"] == {"s3": {"condition": "service_healthy"}}
    # The sandbox of model-written programs (runs execute in the code server) needs these in Docker (see the file).
    assert services["code-server"]["user"] == "root"
    assert set(services["code-server"]["security_opt"]) == {"seccomp=unconfined", "systempaths=unconfined"}
    assert services["postgres"]["image"] == "postgres:16"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["s3"]


def test_gpu_service_is_optional_and_reserves_an_nvidia_gpu(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["command"][:2] == ["--model", "${PERSONA_HUB_VLLM_MODEL:-Qwen/Qwen2.5-7B-Instruct}"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert all("profiles" not in service for name, service in compose["services"].items() if name != "vllm")


def test_the_daemon_refuses_a_hub_pool_other_than_one(tmp_path):
    """The hub's correctness needs its pool at 1: the daemon's entry point sets it always, and refuses another value."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "DAGSTER_HOME": str(tmp_path),  # no dagster.yaml: a throwaway SQLite instance
        "PERSONA_HUB_POOL_LIMITS": "llm=4,persona_hub=2",
    }
    done = subprocess.run(
        [str(REPO / "infra" / "entrypoint.sh"), "daemon"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "persona_hub must be 1, not 2" in done.stderr, done.stderr[-2000:]

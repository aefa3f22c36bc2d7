"""Shared fixtures (temporary storage roots, local and S3 on a moto server; instances; the hub and an evaluated store
for the modules that share them) and the test tiers' markers.

Test tiers. `make test-fast` (the edit-test loop) runs what is marked none of llm, servers, browser, aws, e2e, slow;
`make test` (CI) runs everything. The markers (registered in pyproject.toml):

- llm: runs the embedded llama.cpp model (in the test's process, a subprocess or a model server). Not automatic: put
  `pytestmark = pytest.mark.llm` in a module where every test runs it, else `@pytest.mark.llm` on the test. A test
  that opens the embedded model in its own process without the marker fails and says so (`embedded_model_guard`).
- servers: starts real servers or long-lived processes (moto, PostgreSQL, Dagster's daemon/webserver/code server, a
  model server process). Automatic for tests that use moto (`moto_endpoint`, `s3_env`, `s3_bucket`, the "s3" variant
  of `storage_root`) or `postgres`; otherwise mark it like llm.
- s3: runs against the moto S3 server; automatic, as above (and implies servers).
- aws: runs against moto's other AWS APIs (ECS, EC2); mark the module (implies servers through `moto_endpoint`).
- browser: drives Chromium (playwright); e2e: the deployed system end to end (the UI, the production topology).
- slow: takes over ~10 s for another reason (persona-hub or dagster CLI processes that run jobs, whole Dagster runs
  of many stages, a model distilled); mark it like llm. `--durations=20` on `make test-fast` shows candidates.

A new test needs a marker only if it does one of these things; everything else is in the fast tier. Select with
`-m`, e.g. `pytest -m "not llm"` or `pytest -m s3`.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from persona_hub_dagster.lib.storage import DeltaStore

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARTIFACTS = Path(os.environ.get("PERSONA_HUB_TEST_ARTIFACTS", REPO / ".test-artifacts"))

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    # No instance-metadata lookups: they would hang for seconds on a machine that is not on EC2.
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 for the session; the AWS_* environment points at it while tests run."""
    port = free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """AWS_* variables for the moto server (deltalake, pyarrow and boto3 all read them)."""
    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(key, value)
    return {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint}


@pytest.fixture
def s3_bucket(s3_env):
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """The same tests against a local folder and an s3:// prefix on moto."""
    if request.param == "local":
        return str(tmp_path / "delta")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/persona-hub/delta"


@pytest.fixture
def store(storage_root) -> DeltaStore:
    return DeltaStore(root=storage_root)


@pytest.fixture
def local_store(tmp_path) -> DeltaStore:
    return DeltaStore(root=str(tmp_path / "delta"))


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def hub(tmp_path, instance):
    """(store, register, run) of the persona_hub asset on a temporary root: helpers/hub_run.py."""
    from persona_hub_dagster_tests.helpers.hub_run import hub_runner

    return hub_runner(tmp_path, instance)


@pytest.fixture(scope="module")
def embedder():
    from persona_hub_dagster.lib.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, embedder) -> DeltaStore:
    """Two shards of every task's items and every evaluation (scripted answers): helpers/evaluated_store.py."""
    from persona_hub_dagster_tests.helpers.evaluated_store import evaluated_store

    return evaluated_store(str(tmp_path_factory.mktemp("report") / "delta"), embedder)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# Test workers run side by side (pytest-xdist, `make test`): each embedded model gets one thread, or two workers'
# models would each count the same idle cores at once and oversubscribe them (llama.cpp's threads spin).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("PERSONA_HUB_LLM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def program_sandbox():
    """Tests that evaluate programs use the real boundary (bubblewrap). On a developer machine without it the suite
    opts into the weak mode and says so; CI (PERSONA_HUB_REQUIRE_E2E) must have it."""
    from persona_hub_dagster.lib.evaluation import sandbox

    try:
        sandbox._bwrap()
    except sandbox.SandboxUnavailable as exc:
        if os.environ.get("PERSONA_HUB_REQUIRE_E2E"):
            raise
        print(f"\nnote: {exc.args[0].split('.')[0]}; program-evaluating tests use PERSONA_HUB_SANDBOX=weak")
        os.environ.setdefault(sandbox.SANDBOX_ENV, "weak")
    yield


# -- test tiers (see the module docstring) ---------------------------------------------------------------------------

# Fixtures that start a real server (their users are marked `servers`), and those that put it on moto's S3 (`s3`).
SERVER_FIXTURES = {"moto_endpoint", "postgres"}
S3_FIXTURES = {"s3_env", "s3_bucket"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        # A fixture parametrized "local"/"s3" (storage_root, ...) asks for s3_bucket in its s3 variant only.
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_s3 = bool(fixtures & S3_FIXTURES) or any(isinstance(v, str) and v == "s3" for v in params.values())
        if on_s3:
            item.add_marker(pytest.mark.s3)
        if on_s3 or fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.servers)


@pytest.fixture(autouse=True)
def embedded_model_guard(request, monkeypatch):
    """Keeps the `llm` marker true: a test without it that opens the embedded model in its own process fails."""
    if request.node.get_closest_marker("llm"):
        yield
        return
    from persona_hub_dagster.lib.llm.backends import llama_cpp

    opened = []

    def refuse(self, model=None, *args, **kwargs):
        llama_cpp.resolve_gguf(model)  # a model that is not on disk fails as it would
        opened.append(True)
        raise RuntimeError("this test opens the embedded model: mark it `llm` (see conftest.py)")

    monkeypatch.setattr(llama_cpp.LlamaCppBackend, "__init__", refuse)
    yield
    if opened:
        pytest.fail(f"{request.node.nodeid} opens the embedded model without the `llm` marker (see conftest.py)")

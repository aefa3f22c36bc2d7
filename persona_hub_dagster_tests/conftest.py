"""Shared fixtures: temporary storage roots (local and S3 on a moto server), instances, sample files."""

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

"""The production topology as processes on 127.0.0.1: `dagster api grpc` (code server), `dagster-webserver` and
`dagster-daemon`, each started by infra/entrypoint.sh as its container would be, on the instance of
infra/compose/dagster.yaml: infra/dagster.yaml (Postgres storage, the queued run coordinator, pools, S3 compute logs)
except the run launcher, so runs are subprocesses of the code server here instead of ECS tasks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from persona_hub_dagster_tests.conftest import REPO, free_port, wait_for_port

ENTRYPOINT = REPO / "infra" / "entrypoint.sh"
# infra/dagster.yaml but for the run launcher (test_infra_compose.py holds the two files to that).
COMPOSE_INSTANCE = REPO / "infra" / "compose" / "dagster.yaml"
LOCATION = "persona_hub_dagster"


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen | None = None, interval: float = 1):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} while waiting for {what}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a server still starting
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def stop_process_group(process: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 30) -> None:
    """Stop a server started with its own process group: `first`, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


class Topology:
    """Code server, webserver and daemon; `env` is what every container of the deployment would get."""

    ROLES = ("code-server", "webserver", "daemon")

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.home = folder, folder / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(COMPOSE_INSTANCE, self.home / "dagster.yaml")
        self.code_port, self.web_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_BIND_HOST": "127.0.0.1",
            "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
            "DAGSTER_CODE_SERVER_PORT": str(self.code_port),
            "DAGSTER_WEBSERVER_PORT": str(self.web_port),
            **env,
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def cli(self, *args: str) -> str:
        """A command in the deployment's environment (what `docker compose run` or an ECS one-off task would do)."""
        done = subprocess.run(list(args), env=self.env, cwd=self.folder, capture_output=True, text=True)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, role: str) -> subprocess.Popen:
        log = (self.folder / f"{role}.log").open("a")
        process = subprocess.Popen(
            [str(ENTRYPOINT), role],
            env=self.env,
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that stopping it stops its children
        )
        self.processes[role] = process
        if role == "code-server":
            wait_for_port(self.code_port, process, timeout=180)
        elif role == "webserver":
            wait_until(self.location_loaded, 180, "the webserver to load the code location", process)
        elif role == "daemon":
            wait_until(self.daemon_healthy, 180, "the daemon's heartbeats", process)
        return process

    def start_all(self) -> None:
        for role in self.ROLES:
            self.start(role)

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(role)
        os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def stop(self) -> None:
        for role in reversed(list(self.processes)):
            stop_process_group(self.processes[role])
        self.processes.clear()

    def log(self, role: str) -> str:
        path = self.folder / f"{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return graphql(self.web_port, query, variables)

    def location_loaded(self) -> bool:
        entries = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
        return entries["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED"

    def daemon_healthy(self) -> bool:
        statuses = self.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")[
            "instance"
        ]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])

    def launch_backfill(self, job: str, partitions: list[str], assets: list[str]) -> str:
        launched = self.graphql(
            """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } } }""",
            {
                "params": {
                    "selector": {
                        "partitionSetName": f"{job}_partition_set",
                        "repositorySelector": {"repositoryName": "__repository__", "repositoryLocationName": LOCATION},
                    },
                    "partitionNames": partitions,
                    "assetSelection": [{"path": key.split("/")} for key in assets],
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        return launched["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        return self.graphql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
                ... on PartitionBackfill { status runs(limit: 100) { runId status } } } }""",
            {"id": backfill_id},
        )["partitionBackfillOrError"]

"""The real UI: `dagster dev` on 127.0.0.1, driven by headless Chromium (Playwright) like a user would.

Launches a materialization of raw_text for one shard from the asset page, confirms through GraphQL that the run
succeeded and the shard's Delta table holds the rows, and saves screenshots (asset graph, launch dialog) under
.test-artifacts/.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.conftest import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
# As root in a closed network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHARD = "ui-shard"

if not os.path.exists(CHROMIUM):
    if os.environ.get("PERSONA_HUB_REQUIRE_E2E"):
        raise RuntimeError(f"{CHROMIUM} is missing and PERSONA_HUB_REQUIRE_E2E is set (apt-get install chromium)")
    pytest.skip(
        f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )


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


def wait_until(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode} while waiting for {what}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the server is still starting
            last_error = exc
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def _restore_default_sigint():
    # Started from a non-interactive shell, the test may inherit SIGINT as ignored; dagster dev must get it back
    # so that the interrupt below stops it and its children cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def dagster_dev(tmp_path, artifacts_dir):
    home, storage, source = tmp_path / "home", tmp_path / "delta", tmp_path / "corpus"
    home.mkdir()
    source.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PERSONA_HUB_STORAGE": str(storage),
        "PERSONA_HUB_SOURCE": str(source),
    }
    sample = REPO / "persona_hub_dagster" / "data" / "sample_corpus.jsonl"
    subprocess.run(
        [sys.executable, "-m", "persona_hub_dagster.cli", "register-shard", str(sample), "--key", SHARD],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )

    port = free_port()
    log = (artifacts_dir / "dagster_dev.log").open("w")
    dagster = Path(sys.executable).parent / "dagster"
    process = subprocess.Popen(
        [str(dagster), "dev", "--host", "127.0.0.1", "--port", str(port), "--workspace", "workspace.yaml"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the webserver, daemon and code server stop together
        preexec_fn=_restore_default_sigint,
    )
    try:
        wait_until(
            lambda: graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")[
                "workspaceOrError"
            ]["locationEntries"][0]["loadStatus"]
            == "LOADED",
            timeout=180,
            what="the code location to load",
            process=process,
        )
        yield port, DeltaStore(root=str(storage))
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def dismiss_community_dialog(page) -> None:
    """The UI greets a new instance with a "Join the Dagster community" dialog, a moment after the page renders."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=15_000)
    except Exception:
        return  # not shown (the instance has seen it before)
    skip.click()
    skip.wait_for(state="detached")


def launch_materialization(page, materialize, artifacts_dir: Path) -> None:
    materialize.click()
    # raw_text is produced together with raw_text_rejects; the UI asks to confirm the pair.
    page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    page.get_by_text("Launch runs to materialize").wait_for()
    page.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem", name=SHARD).click()
    page.keyboard.press("Escape")
    launch = page.get_by_role("button", name="Launch 1 run")
    launch.wait_for()
    page.screenshot(path=str(artifacts_dir / "launch_dialog.png"))
    launch.click()


def test_materialize_a_shard_from_the_asset_page(dagster_dev, artifacts_dir):
    from playwright.sync_api import sync_playwright

    port, store = dagster_dev
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)

        page.goto(f"{base}/assets/raw_text", wait_until="networkidle")
        materialize = page.get_by_role("button", name="Materialize…")
        materialize.wait_for()
        dismiss_community_dialog(page)
        try:
            launch_materialization(page, materialize, artifacts_dir)
        except Exception:
            page.screenshot(path=str(artifacts_dir / "failure.png"))
            raise

        runs_query = """
            query ($partition: String!) {
              runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
                ... on Runs { results { runId status } }
              }
            }"""

        def finished_run():
            runs = graphql(port, runs_query, {"partition": SHARD})["runsOrError"]["results"]
            done = [r for r in runs if r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]
            return done[0] if done else None

        run = wait_until(finished_run, timeout=300, what="the launched run to finish")
        assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']}; see dagster_dev.log"

        materialization = graphql(
            port,
            """{ assetOrError(assetKey: {path: ["raw_text"]}) {
                   ... on Asset { assetMaterializations(limit: 1) { partition runId
                     metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }""",
        )["assetOrError"]["assetMaterializations"][0]
        assert materialization["partition"] == SHARD and materialization["runId"] == run["runId"]
        rows = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}
        assert rows["dagster/partition_row_count"] == store.row_count("raw_text", [SHARD]) > 100

        # The asset graph, for the test artifacts: the global lineage shows one collapsed node per
        # group; the ingestion group's own lineage shows both of its assets.
        try:
            page.goto(f"{base}/asset-groups", wait_until="networkidle")
            for group in ("ingestion", "hub"):
                page.get_by_text(group, exact=True).first.wait_for()
            page.screenshot(path=str(artifacts_dir / "asset_graph.png"), full_page=True)
            page.goto(f"{base}/locations/persona_hub_dagster/asset-groups/ingestion", wait_until="networkidle")
            page.get_by_text("raw_text_rejects").first.wait_for()
            page.screenshot(path=str(artifacts_dir / "ingestion_group.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(artifacts_dir / "failure.png"))
            raise
        browser.close()

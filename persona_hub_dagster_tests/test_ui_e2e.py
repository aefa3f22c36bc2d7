"""The user's day in the real UI: `dagster dev` on 127.0.0.1, driven by headless Chromium (Playwright).

One `dagster dev` for the module, on an instance prepared in-process (three text shards through Text-to-Persona on
the embedded model, a shard of ready-made personas through the hub). The tests: a backfill of three shards launched
from an asset's Materialize dialog and followed on its page; the upstream lineage of a synthetic task and the column
lineage of the hub; the Automation page with the nightly expansion and the sensor; partition metadata on the Plots
view. Screenshots (checked not blank) go to .test-artifacts/; GraphQL confirms what the pages show.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from persona_hub_dagster.lib.storage import DeltaStore
from persona_hub_dagster_tests.conftest import REPO, free_port
from persona_hub_dagster_tests.helpers.topology import graphql, stop_process_group, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.servers, pytest.mark.llm, pytest.mark.timeout(600)]

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
TEXT_SHARDS = ("news-a", "news-b", "news-c")
PERSONA_SHARD = "personas-crowd"
# Text-to-Persona on the embedded model, small enough for a browser test: two texts per shard, one relation each.
TINY_PERSONAS = {"text_to_persona": {"config": {"relations_per_text": 1, "max_texts": 2, "max_tokens": 48}}}

if not os.path.exists(CHROMIUM):
    if os.environ.get("PERSONA_HUB_REQUIRE_E2E"):
        raise RuntimeError(f"{CHROMIUM} is missing and PERSONA_HUB_REQUIRE_E2E is set (apt-get install chromium)")
    pytest.skip(
        f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )


def _restore_default_sigint():
    # Started from a non-interactive shell, the test may inherit SIGINT as ignored; dagster dev must get it back
    # so that the interrupt below stops it and its children cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def prepare(home: Path, storage: Path, source: Path) -> None:
    """What the UI tests find when they open the browser: three text shards whose Text-to-Persona ran (partition
    metadata to plot), and a shard of ready-made personas taken through the hub (column lineage to inspect) and onto
    the coverage map, all in
    the instance `dagster dev` will serve. In-process: one model load for all of it."""
    import dagster as dg

    from persona_hub_dagster.defs.coverage.assets import persona_clusters_asset
    from persona_hub_dagster.defs.hub.assets import build_persona_hub
    from persona_hub_dagster.defs.models import EmbeddingsResource, LLMResource
    from persona_hub_dagster.defs.partitions import register_shards
    from persona_hub_dagster.defs.personas.assets import persona_to_persona_asset, text_to_persona_asset
    from persona_hub_dagster.defs.raw_text.assets import ingest_raw_text
    from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
    from persona_hub_dagster.lib.shard_identity import discover_shard_files
    from persona_hub_dagster.lib.shards import ShardRegistry

    lines = (REPO / "persona_hub_dagster" / "data" / "sample_corpus.jsonl").read_text().splitlines()
    for index, key in enumerate(TEXT_SHARDS):
        (source / f"{key}.jsonl").write_text("\n".join(lines[index * 3 : index * 3 + 3]) + "\n")
    (source / "personas").mkdir()
    roles = ["nurse", "welder", "historian", "beekeeper", "ferry captain"]
    (source / "personas" / "crowd.jsonl").write_text(
        "".join(
            json.dumps({"persona": f"A {role} from {city} who collects old maps of the coast"}) + "\n"
            for role in roles
            for city in ("Lisbon", "Osaka", "Nairobi", "Tromso")
        )
    )
    store = DeltaStore(root=str(storage))
    files = discover_shard_files(str(source)).files
    storage_resource = DeltaStorageResource(root=str(storage))
    resources = {
        "storage": storage_resource,
        "io_manager": DeltaIOManager(storage=storage_resource),
        "llm": LLMResource(),
        "embeddings": EmbeddingsResource(),
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        register_shards(instance, ShardRegistry(store), files, registered_by="test")
        for shard in files:
            assets = [ingest_raw_text, text_to_persona_asset]
            if shard.kind == "personas":
                assets += [persona_to_persona_asset, build_persona_hub, persona_clusters_asset]
            result = dg.materialize(
                assets,
                partition_key=shard.key,
                instance=instance,
                resources=resources,
                run_config={"ops": TINY_PERSONAS},
            )
            assert result.success, shard.key


@pytest.fixture(scope="module")
def ui(tmp_path_factory, artifacts_dir):
    """`dagster dev` on the prepared instance (webserver, daemon and code server, as a user starts them)."""
    root = tmp_path_factory.mktemp("ui")
    home, storage, source = root / "home", root / "delta", root / "corpus"
    home.mkdir()
    source.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    prepare(home, storage, source)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PERSONA_HUB_STORAGE": str(storage),
        "PERSONA_HUB_SOURCE": str(source),
        # The prepared shards stay as prepared: the tests launch what they look at (automation would build the rest).
        "PERSONA_HUB_AUTOMATION": "0",
    }
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
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"http://127.0.0.1:{port}/assets/raw_text", wait_until="networkidle")
            dismiss_community_dialog(page)
            yield UI(port, DeltaStore(root=str(storage)), page, artifacts_dir)
            browser.close()
    finally:
        stop_process_group(process, signal.SIGINT, grace=60)  # dagster dev stops its children on SIGINT
        log.close()


class UI:
    def __init__(self, port: int, store: DeltaStore, page, artifacts: Path):
        self.port, self.store, self.page, self.artifacts = port, store, page, artifacts
        self.base = f"http://127.0.0.1:{port}"

    def open(self, path: str) -> None:
        self.page.goto(self.base + path, wait_until="networkidle")

    def screenshot(self, name: str, target=None) -> Path:
        """A screenshot under .test-artifacts/, checked not to be blank (a page that failed to render is one
        colour)."""
        from PIL import Image

        path = self.artifacts / f"{name}.png"
        (target or self.page).screenshot(path=str(path))
        with Image.open(path) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 16, f"{path} is blank"
        return path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return graphql(self.port, query, variables)


def dismiss_community_dialog(page) -> None:
    """The UI greets a new instance with a "Join the Dagster community" dialog, a moment after the page renders."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=15_000)
    except Exception:
        return  # not shown (the instance has seen it before)
    skip.click()
    skip.wait_for(state="detached")


def on_failure_screenshot(ui: UI, name: str):
    class Guard:
        def __enter__(self):
            return self

        def __exit__(self, kind, value, traceback):
            if kind is not None:
                ui.page.screenshot(path=str(ui.artifacts / f"{name}-failure.png"))
            return False

    return Guard()


def test_backfill_three_shards_from_the_materialize_dialog(ui):
    """Select three shards in raw_text's Materialize dialog, launch the backfill, follow it on its page."""
    page = ui.page
    with on_failure_screenshot(ui, "backfill"):
        ui.open("/assets/raw_text")
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Select a partition or create one").click()
        for key in TEXT_SHARDS:
            page.get_by_role("menuitem", name=key).click()
        page.keyboard.press("Escape")
        dialog.get_by_text("3 partitions").wait_for()
        ui.screenshot("backfill_dialog")
        dialog.get_by_role("button", name="Launch backfill").click()
        view = page.get_by_role("link", name="View", exact=True)  # the toast's link to the backfill's page
        backfill_id = view.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
        view.click()
        page.get_by_text("Partition selection").wait_for()
        status_query = """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
            ... on PartitionBackfill { status runs(limit: 10) { runId status } } } }"""
        backfill = wait_until(
            lambda: (b := ui.graphql(status_query, {"id": backfill_id})["partitionBackfillOrError"])["status"]
            not in {"REQUESTED", "IN_PROGRESS"}
            and b,
            timeout=300,
            what="the backfill to finish",
        )
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        page.reload(wait_until="networkidle")
        page.get_by_text("Succeeded", exact=True).first.wait_for()  # the backfill's status
        ui.screenshot("backfill_page")

    # Each shard was materialized exactly once by the backfill's runs, with the rows its Delta partition holds.
    runs = {r["runId"] for r in backfill["runs"]}
    assert len(runs) == 3 and {r["status"] for r in backfill["runs"]} == {"SUCCESS"}
    events = ui.graphql(
        """{ assetOrError(assetKey: {path: ["raw_text"]}) { ... on Asset { assetMaterializations(limit: 50) {
             partition runId metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
    )["assetOrError"]["assetMaterializations"]
    by_backfill = [e for e in events if e["runId"] in runs]
    assert sorted(e["partition"] for e in by_backfill) == sorted(TEXT_SHARDS)
    for event in by_backfill:
        rows = {e["label"]: e.get("intValue") for e in event["metadataEntries"]}
        assert rows["dagster/partition_row_count"] == ui.store.row_count("raw_text", [event["partition"]]) == 3


def test_lineage_from_a_synthetic_task_back_to_raw_text(ui):
    page = ui.page
    with on_failure_screenshot(ui, "lineage"):
        ui.open("/assets/synthetic/math?view=lineage&lineageScope=upstream&lineageDepth=10")
        graph = page.locator("[data-testid=asset-node], svg").first
        graph.wait_for()
        for node in ("raw_text", "text_personas", "expanded_personas", "persona_hub", "demonstrations"):
            page.get_by_text(node, exact=True).first.wait_for()
        ui.screenshot("lineage_synthetic_math")

        # Column lineage: persona_hub.persona_id comes from the persona tables' persona_id (the Columns table shows
        # each column's sources; the graph of column lineage is a Dagster+ view).
        ui.open("/assets/persona_hub")
        row = page.get_by_role("row").filter(has=page.get_by_text("persona_id", exact=True))
        row.get_by_text("text_personas.persona_id").wait_for()
        row.scroll_into_view_if_needed()
        ui.screenshot("column_lineage_persona_hub")
    lineage = ui.graphql(
        """{ assetOrError(assetKey: {path: ["persona_hub"]}) { ... on Asset { assetMaterializations(limit: 1) {
             metadataEntries { label ... on TableColumnLineageMetadataEntry { lineage { columnName
               columnDeps { assetKey { path } columnName } } } } } } } }"""
    )["assetOrError"]["assetMaterializations"][0]["metadataEntries"]
    deps = {
        entry["columnName"]: {("/".join(d["assetKey"]["path"]), d["columnName"]) for d in entry["columnDeps"]}
        for e in lineage
        if e["label"] == "dagster/column_lineage"
        for entry in e["lineage"]
    }
    assert ("text_personas", "persona_id") in deps["persona_id"]


def test_the_automation_page_lists_the_nightly_expansion_and_the_sensors(ui):
    page = ui.page
    sensor_ticks = """{ sensorOrError(sensorSelector: {repositoryName: "__repository__",
        repositoryLocationName: "persona_hub_dagster", sensorName: "text_shard_sensor"}) {
        ... on Sensor { sensorState { status ticks(limit: 1) { status timestamp } } } } }"""
    # The daemon evaluates the sensor soon after it starts (it runs by default).
    wait_until(
        lambda: ui.graphql(sensor_ticks)["sensorOrError"]["sensorState"]["ticks"], timeout=120, what="a sensor tick"
    )
    with on_failure_screenshot(ui, "automation"):
        ui.open("/automation")
        rows = page.locator("[data-index]")  # the automation list's rows
        schedule = rows.filter(has=page.get_by_text("nightly_persona_expansion", exact=True))
        sensor = rows.filter(has=page.get_by_text("text_shard_sensor", exact=True))
        schedule.get_by_text("At 02:00 AM UTC").wait_for()
        assert schedule.get_by_role("checkbox").last.is_checked()  # its switch: running
        assert sensor.get_by_role("checkbox").last.is_checked()
        for name in ("stage_automation", "automation"):  # the declarative automation's sensors, stopped here
            automation = rows.filter(has=page.get_by_text(name, exact=True))
            automation.get_by_text(name, exact=True).wait_for()
            assert not automation.get_by_role("checkbox").last.is_checked()
        ui.screenshot("automation")
        schedule.get_by_text("nightly_persona_expansion", exact=True).click()
        next_tick = page.get_by_role("row").filter(has=page.get_by_text("Next tick", exact=True))
        next_tick.get_by_text(re.compile(r"2:00:00 AM UTC")).wait_for()
        ui.screenshot("nightly_persona_expansion")
        ui.open("/automation")
        sensor.get_by_text("text_shard_sensor", exact=True).click()
        latest = page.get_by_role("row").filter(has=page.get_by_text("Latest tick", exact=True))
        latest.get_by_text(re.compile(r"runs? requested")).wait_for()  # its last tick, with what it did
        ui.screenshot("text_shard_sensor")
    state = ui.graphql(
        """{ scheduleOrError(scheduleSelector: {repositoryName: "__repository__",
             repositoryLocationName: "persona_hub_dagster", scheduleName: "nightly_persona_expansion"}) {
             ... on Schedule { scheduleState { status } futureTicks(limit: 1) { results { timestamp } } } } }"""
    )["scheduleOrError"]
    assert state["scheduleState"]["status"] == "RUNNING" and state["futureTicks"]["results"]


def test_partition_metadata_is_plotted(ui):
    """text_personas' partition metadata (rows, rejection rate, LLM tokens) on the asset's Plots view."""
    page = ui.page
    with on_failure_screenshot(ui, "plots"):
        ui.open("/assets/text_personas")
        page.get_by_role("button", name="Plots").click()
        for label in ("dagster/partition_row_count", "rejection_rate", "llm/completion_tokens"):
            page.get_by_text(label, exact=True).first.wait_for()
        plot = (
            page.locator("div")
            .filter(has=page.get_by_text("llm/completion_tokens", exact=True))
            .filter(has=page.locator("canvas"))
            .last
        )
        plot.scroll_into_view_if_needed()
        assert page.locator("canvas").count() >= 3
        ui.screenshot("plots_text_personas")
    # What is plotted: one point per shard that ran Text-to-Persona, with real token counts.
    events = ui.graphql(
        """{ assetOrError(assetKey: {path: ["text_personas"]}) { ... on Asset { assetMaterializations(limit: 20) {
             partition metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
    )["assetOrError"]["assetMaterializations"]
    tokens = {
        e["partition"]: next(m["intValue"] for m in e["metadataEntries"] if m["label"] == "llm/completion_tokens")
        for e in events
    }
    assert all(tokens[shard] > 0 for shard in TEXT_SHARDS) and tokens[PERSONA_SHARD] == 0


def test_the_coverage_map_shows_what_the_hub_holds(ui):
    """persona_clusters' latest materialization: its clusters as a table and the map as an image, in the browser."""
    page = ui.page
    with on_failure_screenshot(ui, "coverage_map"):
        ui.open("/assets/persona_clusters")
        for label in ("hub_clusters", "coverage_map", "clustering"):
            page.get_by_text(label, exact=True).first.wait_for()
        row = page.get_by_role("row").filter(has=page.get_by_text("coverage_map", exact=True))
        row.get_by_text("[Show Markdown]").first.click()  # Markdown metadata opens in a dialog
        image = page.locator('img[src^="data:image/png"]').first
        image.wait_for()
        assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) >= 600
        ui.screenshot("coverage_map")


def test_the_asset_graph_shows_every_group(ui):
    page = ui.page
    with on_failure_screenshot(ui, "asset_graph"):
        ui.open("/asset-groups")
        for group in ("ingestion", "personas", "hub", "synthesis", "evaluation", "release"):
            page.get_by_text(group, exact=True).first.wait_for()
        ui.screenshot("asset_graph")

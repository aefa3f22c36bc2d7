"""The coverage map, persona search and aimed, stratified synthesis on a real hub (real persona_hub and
persona_clusters runs, MiniLM) whose personas are planted kinds of people in skewed proportions, in English, German,
Chinese and Thai (helpers/planted_hub.py)."""

import io
from collections import Counter

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from persona_hub_dagster.defs.coverage.assets import persona_clusters_asset
from persona_hub_dagster.defs.hub.assets import build_persona_hub
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.coverage import clustering, selection
from persona_hub_dagster.lib.coverage.persona_clusters import load_clustering
from persona_hub_dagster.lib.coverage.search import SearchError, search
from persona_hub_dagster.lib.synthesis.generate import draw_personas
from persona_hub_dagster.lib.synthesis.steps import SynthesisSettings
from persona_hub_dagster_tests.helpers.hub_run import personas
from persona_hub_dagster_tests.helpers.planted_hub import INTERESTS, KINDS, planted_personas

RARE = [kind for kind, (weight, _, _) in KINDS.items() if weight == 1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(store, kind of each persona text, cluster runs): shard s1 (300 personas of planted kinds, 6 Chinese, 6 Thai)
    through persona_hub and persona_clusters; then s2 (more of the same) and s3 (a kind s1 never had)."""
    from dagster import DagsterInstance

    from persona_hub_dagster_tests.helpers.hub_run import hub_runner

    tmp = tmp_path_factory.mktemp("coverage")
    with DagsterInstance.ephemeral() as instance:
        store, register, run_hub = hub_runner(tmp, instance)
        kinds: dict[str, str] = {}
        shards = {
            "s1": planted_personas(300, seed=1, scripts=6),
            "s2": planted_personas(60, seed=2),
            "s3": [("astronaut", t) for t in ASTRONAUTS],
        }
        register(*shards)
        storage = DeltaStorageResource(root=store.root)
        resources = {
            "storage": storage,
            "io_manager": DeltaIOManager(storage=storage),
            "embeddings": EmbeddingsResource(),
        }
        runs = {}
        for shard, planted_rows in shards.items():
            kinds.update({text: kind for kind, text in planted_rows})
            texts = [text for _, text in planted_rows]
            store.write_partitions("text_personas", personas(shard, texts), partitions=[shard])
            assert run_hub(shard).success
            runs[shard] = dg.materialize(
                [build_persona_hub, persona_clusters_asset],
                selection=[persona_clusters_asset.key],
                partition_key=shard,
                instance=instance,
                resources=resources,
            )
            assert runs[shard].success
        yield store, kinds, runs


ASTRONAUTS = [
    f"An astronaut {what} aboard the {where} who {then}."
    for what in ("training for a spacewalk", "running plant experiments", "repairing solar arrays")
    for where in ("International Space Station", "lunar gateway", "Tiangong station", "Artemis capsule")
    for then in ("films the Earth at night", "answers questions from school children", "misses fresh bread")
]


def metadata(result, key):
    [materialization] = result.asset_materializations_for_node("cluster_personas")
    return materialization.metadata[key].value


def hub_frame(store, shard):
    return store.read("persona_hub", [shard])


def test_every_hub_persona_is_placed_with_a_labelled_cluster_and_scripts_have_their_stratum(planted):
    store, kinds, runs = planted
    rows = store.read("persona_clusters", ["s1"])
    hub = hub_frame(store, "s1")
    assert sorted(rows["persona_id"].to_list()) == sorted(hub["persona_id"].to_list())
    placed = hub.join(rows, on="persona_id")
    k = metadata(runs["s1"], "clusters")
    assert k == clustering.choose_k(hub.height)
    by_script = {
        kinds[p]: c
        for p, c in zip(placed["persona"], placed["cluster"], strict=True)
        if kinds[p] in ("thai", "chinese")
    }
    assert by_script == {"thai": clustering.script_stratum("Thai"), "chinese": clustering.script_stratum("Han")}
    thai = placed.filter(pl.col("cluster") == clustering.script_stratum("Thai"))
    assert thai["similarity"].null_count() == thai.height and thai["cluster_label"][0].startswith("Thai script")
    # Each planted kind is mostly one or a few clusters, and each cluster's label says what it is.
    first = load_clustering(store, metadata(runs["s1"], "clustering"))
    for kind in ("software", "retail", "healthcare", "crafts", "farming"):
        members = Counter(c for p, c in zip(placed["persona"], placed["cluster"], strict=True) if kinds[p] == kind)
        label = first.label_of(members.most_common(1)[0][0])
        _, roles, places = KINDS[kind]
        vocabulary = set(" ".join(roles + places + INTERESTS[kind]).lower().split())
        assert set(label.split(" · ")) & vocabulary, (kind, label)


def test_the_map_is_a_png_of_the_clusters(planted):
    store, _, runs = planted
    uri = metadata(runs["s1"], "map_uri")
    image = Image.open(io.BytesIO(filesystems.read_bytes(uri)))
    assert image.format == "PNG" and image.size[0] >= 600
    assert "data:image/png;base64," in metadata(runs["s1"], "coverage_map")
    table = metadata(runs["s1"], "hub_clusters")
    assert table.count("\n") >= clustering.choose_k(hub_frame(store, "s1").height) + 1


def test_stratified_draws_reach_every_planted_kind_where_uniform_draws_follow_the_dense_ones(planted):
    store, kinds, _ = planted
    hub = hub_frame(store, "s1")
    drawn = {}
    for mode in ("stratified", "uniform"):
        settings = SynthesisSettings(personas=20, sampling=mode, seed=3)
        result = draw_personas(hub, settings, store, "s1")
        drawn[mode] = Counter(kinds[p] for p in result.personas["persona"])
        assert result.personas.height == 20 and result.composition()["mode"] == mode
    assert set(RARE + ["thai", "chinese"]) <= set(drawn["stratified"]), drawn
    assert not set(RARE + ["thai", "chinese"]) <= set(drawn["uniform"]), drawn
    common = drawn["uniform"]["software"] + drawn["uniform"]["retail"]
    assert drawn["stratified"]["software"] + drawn["stratified"]["retail"] < common
    composition = draw_personas(hub, SynthesisSettings(personas=20, seed=3), store, "s1").composition()
    assert sum(composition["per_cluster"].values()) == 20 and composition["cluster_entropy_bits"] > 3


def test_a_query_aims_the_draw_at_its_kind_and_filters_and_clusters_narrow_it(planted):
    store, kinds, _ = planted
    hub = hub_frame(store, "s1")
    embedder = EmbeddingsResource().lazy_embedder(store)
    query = "healthcare workers: nurses, doctors and paramedics"
    aimed = draw_personas(hub, SynthesisSettings(personas=None, query=query), store, "s1", embedder)
    got = Counter(kinds[p] for p in aimed.personas["persona"])
    planted_healthcare = sum(1 for p in hub["persona"] if kinds[p] == "healthcare")
    # Precision and recall of the planted kind at the default min_similarity (bench/RESULTS.md has the curve).
    assert got["healthcare"] >= 0.9 * sum(got.values()) and got["healthcare"] >= 0.7 * planted_healthcare, got
    rows = store.read("persona_clusters", ["s1"])
    thai_cluster = clustering.script_stratum("Thai")
    only_thai = draw_personas(hub, SynthesisSettings(personas=None, clusters=(thai_cluster,)), store, "s1")
    assert {kinds[p] for p in only_thai.personas["persona"]} == {"thai"}
    assert only_thai.personas.height == rows.filter(pl.col("cluster") == thai_cluster).height
    filtered = draw_personas(hub, SynthesisSettings(personas=None, where=("relation=write",)), store, "s1")
    assert filtered.personas.height == 0 and filtered.eligible == 0
    with pytest.raises(ValueError, match="no column 'colour'"):
        draw_personas(hub, SynthesisSettings(where=("colour=red",)), store, "s1")


def test_search_returns_the_planted_kind_first_with_clusters_and_lineage(planted):
    store, kinds, _ = planted
    embedder = EmbeddingsResource().lazy_embedder(store)
    found = search(store, "a beekeeper or dairy farmer working the land", embedder, k=5)
    assert found.height == 5 and found["rank"].to_list() == [1, 2, 3, 4, 5]
    assert kinds[found["persona"][0]] == "farming"
    assert found["similarity"].to_list() == sorted(found["similarity"].to_list(), reverse=True)
    assert found["cluster"].null_count() == 0 and found["text_id"].null_count() == 0
    only_s2 = search(store, "a beekeeper or dairy farmer working the land", embedder, k=3, shard="s2")
    assert set(only_s2["shard"]) <= {"s2"}
    with pytest.raises(SearchError, match="Thai script"):
        search(store, "พยาบาลที่ทำงานในโรงพยาบาล", embedder)


def test_a_new_shard_is_assigned_without_reclustering_and_a_new_kind_of_people_reclusters(planted):
    store, _, runs = planted
    first = metadata(runs["s1"], "clustering")
    assert metadata(runs["s1"], "reclustered") == "no clustering yet"
    assert metadata(runs["s2"], "reclustered") == "no" and metadata(runs["s2"], "clustering") == first
    assert set(store.read("persona_clusters", ["s2"])["clustering"]) == {first}
    assert metadata(runs["s2"], "outlier_share") < clustering.OUTLIER_SHARE_TO_RECLUSTER
    # Astronauts are nothing like s1's people: most fall below the floor, and the hub is clustered again.
    assert "less similar to their cluster" in metadata(runs["s3"], "reclustered")
    assert metadata(runs["s3"], "clustering") != first
    assert metadata(runs["s3"], "shards_on_older_clusterings") == ["s1", "s2"]
    [check] = runs["s3"].get_asset_check_evaluations()
    assert check.check_name == "clustering_current" and not check.passed


def test_synthesis_items_keep_the_cluster_and_report_the_composition(planted):
    from persona_hub_dagster.lib.llm.client import LLMClient
    from persona_hub_dagster.lib.llm.types import Completion
    from persona_hub_dagster.lib.synthesis.generate import synthesize
    from persona_hub_dagster.lib.synthesis.tasks import TASKS
    from persona_hub_dagster_tests.helpers.scripted_backend import ScriptedBackend
    from persona_hub_dagster_tests.helpers.synthetic_answers import good_answer

    store, _, _ = planted
    hub = hub_frame(store, "s1")
    settings = TASKS["math"].settings(personas=8)
    drawn = draw_personas(hub, settings, store, "s1")
    client = LLMClient(ScriptedBackend(lambda r: Completion(good_answer(r), finish_reason="stop")))
    output = synthesize(TASKS["math"], hub, client, settings, shard="s1", run_id="r", store=store, drawn=drawn)
    clusters = dict(zip(drawn.personas["persona_id"], drawn.personas["cluster"], strict=True))
    assert output.rows and all(row["persona_cluster"] == clusters[row["persona_id"]] for row in output.rows)


def test_where_filters_parse_and_reject_what_they_cannot_read():
    assert selection.parse_where(["hop=1|2", "source!=text_personas"]) == [
        ("hop", False, ["1", "2"]),
        ("source", True, ["text_personas"]),
    ]
    with pytest.raises(ValueError, match="column=value"):
        SynthesisSettings(where=("hop",))
    with pytest.raises(ValueError, match="sampling must be"):
        SynthesisSettings(sampling="evenly")


def test_the_commands_search_the_hub_and_show_what_a_setting_selects(planted, tmp_path):
    import json
    import os

    from persona_hub_dagster_tests.helpers.cli import persona_hub

    store, kinds, _ = planted
    env = {**os.environ, "PERSONA_HUB_STORAGE": store.root, "DAGSTER_HOME": str(tmp_path)}
    found = persona_hub(env, "personas", "search", "a beekeeper or dairy farmer", "--k", "3", "--json")
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and kinds[rows[0]["persona"]] == "farming"
    assert rows[0]["cluster_label"] and rows[0]["text_id"].startswith("text-")
    plain = persona_hub(env, "personas", "search", "a beekeeper or dairy farmer", "--shard", "s2")
    assert plain.stdout.count("\n") == 20 and " s2 " in plain.stdout.splitlines()[0]
    thai = persona_hub(env, "personas", "search", "พยาบาล", check=False)
    assert thai.returncode == 2 and "Thai script" in thai.stderr
    query = "query=healthcare workers: nurses, doctors and paramedics"
    shown = persona_hub(env, "prompt", "math", "--shard", "s1", "--set", query, "--set", "personas=5")
    selection_line = json.loads(shown.stderr.strip().splitlines()[-1])["selection"]
    assert selection_line["drawn"] == 5 and selection_line["eligible"] >= 10
    drawn_persona = next(line for line in shown.stdout.splitlines() if "nurse" in line or "paramedic" in line)
    assert drawn_persona


def test_an_empty_shard_and_a_hub_of_unreadable_scripts_are_placed_without_a_model(tmp_path):
    from persona_hub_dagster.lib.coverage.persona_clusters import ClusterSettings, place_shard
    from persona_hub_dagster.lib.storage import DeltaStore

    store = DeltaStore(root=str(tmp_path / "delta"))
    embedder = EmbeddingsResource().lazy_embedder(store)
    empty = pl.DataFrame(schema={"persona_id": pl.String, "persona": pl.String})
    rows, report = place_shard(store, "e", empty, embedder, ClusterSettings(), "r")
    assert rows.height == 0 and report["clusters"] == 0
    thai = pl.DataFrame({"persona_id": ["t1", "t2"], "persona": ["ครูสอนภาษาไทยที่เชียงใหม่", "ชาวประมงที่ภูเก็ต"]})
    rows, report = place_shard(store, "t", thai, embedder, ClusterSettings(), "r")
    assert rows["cluster"].to_list() == [clustering.script_stratum("Thai")] * 2
    assert rows["cluster_label"][0].startswith("Thai script") and embedder._embedder is None  # never loaded

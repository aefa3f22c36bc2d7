"""The persona_hub asset in real runs: incremental across shards in registration order, explainable decisions,
range runs, the prefix check, and exact replacement on re-runs. Candidates are Delta tables written here, shaped
like text_personas / expanded_personas."""

import dagster as dg
import polars as pl

from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.tables import HUB_EMBEDDINGS, HUB_MINHASH_BANDS, HUB_RUNS
from persona_hub_dagster_tests.helpers.hub_run import CHEF, NURSE, PILOT, SAILOR, TEACHER, check, personas


def decisions(store, shard) -> dict[str, dict]:
    rows = store.read("persona_hub_decisions", [shard])
    return {r["persona"]: r for r in rows.iter_rows(named=True)}


def test_a_later_shard_is_deduplicated_against_the_earlier_one_which_keeps_its_rows(hub):
    store, register, run = hub
    register("s1", "s2")
    store.write_partitions(
        "text_personas", personas("s1", [NURSE, SAILOR, NURSE.upper(), "Chess coach."]), partitions=["s1"]
    )
    s2_texts = [
        NURSE.replace("works", "works gladly"),  # near-duplicate of an s1 persona (MinHash: J = 15/16)
        CHEF,
        CHEF.replace("young ", "").replace("tiny", "small"),  # a paraphrase within s2 (J = 0.83: embeddings)
        "I'm sorry, but I cannot describe who reads this text.",
        TEACHER,
    ]
    store.write_partitions("text_personas", personas("s2", s2_texts), partitions=["s2"])

    first = run("s1")
    hub_s1 = store.read("persona_hub", ["s1"])
    assert sorted(hub_s1["persona"].to_list()) == sorted([NURSE, SAILOR])
    d1 = decisions(store, "s1")
    assert d1[NURSE.upper()]["reason"] == "minhash" and d1[NURSE.upper()]["duplicate_of"] == content_id(NURSE)
    assert d1["Chess coach."]["reason"] == "quality:too_short"
    assert check(first, "prefix_complete").passed

    second = run("s2")
    d2 = decisions(store, "s2")
    near = d2[s2_texts[0]]
    assert (near["decision"], near["reason"], near["duplicate_of"], near["duplicate_of_shard"]) == (
        "dropped",
        "minhash",
        content_id(NURSE),
        "s1",
    )
    assert near["similarity"] >= 0.9
    paraphrase = d2[s2_texts[2]]
    assert (paraphrase["reason"], paraphrase["duplicate_of"], paraphrase["duplicate_of_shard"]) == (
        "semantic",
        content_id(CHEF),
        "s2",
    )
    assert paraphrase["similarity"] >= 0.9
    assert d2[s2_texts[3]]["reason"] == "quality:refusal"
    assert sorted(store.read("persona_hub", ["s2"])["persona"].to_list()) == sorted([CHEF, TEACHER])
    assert store.read("persona_hub", ["s1"]).sort("persona").equals(hub_s1.sort("persona"))  # s1 untouched
    assert check(second, "prefix_complete").passed

    metadata = second.asset_materializations_for_node("build_persona_hub")[0].metadata
    assert metadata["candidates"].value == 5 and metadata["kept"].value == 2
    assert metadata["dropped_by_reason"].value == {"minhash": 1, "quality:refusal": 1, "semantic": 1}
    # Every candidate is accounted for exactly once.
    assert store.row_count("persona_hub_decisions", ["s2"]) == 5


def test_semantic_duplicates_across_shards(hub):
    store, register, run = hub
    register("s1", "s2")
    store.write_partitions("text_personas", personas("s1", [PILOT]), partitions=["s1"])
    paraphrase = (
        "A freight airline pilot flying overnight transatlantic routes who studies weather science in her spare time."
    )
    store.write_partitions("text_personas", personas("s2", [paraphrase, SAILOR]), partitions=["s2"])
    run("s1")
    run("s2", run_config={"ops": {"build_persona_hub": {"config": {"semantic_threshold": 0.75}}}})
    d2 = decisions(store, "s2")
    assert d2[paraphrase]["reason"] == "semantic" and d2[paraphrase]["duplicate_of_shard"] == "s1"
    assert 0.75 <= d2[paraphrase]["similarity"] < 0.9
    assert d2[SAILOR]["decision"] == "kept"
    assert store.read(HUB_EMBEDDINGS, ["s2"])["persona_id"].to_list() == [content_id(SAILOR)]


def test_a_range_runs_in_registration_order_in_one_run(hub):
    store, register, run = hub
    register("b-first", "a-second")  # registration order differs from alphabetical order
    store.write_partitions("text_personas", personas("b-first", [SAILOR]), partitions=["b-first"])
    store.write_partitions("text_personas", personas("a-second", [SAILOR, CHEF]), partitions=["a-second"])
    result = run(
        tags={"dagster/asset_partition_range_start": "b-first", "dagster/asset_partition_range_end": "a-second"}
    )
    metadata = result.asset_materializations_for_node("build_persona_hub")[0].metadata
    assert metadata["shards_in_order"].value == ["b-first", "a-second"]
    assert decisions(store, "a-second")[SAILOR]["duplicate_of_shard"] == "b-first"
    assert store.read("persona_hub")["persona"].sort().to_list() == sorted([SAILOR, CHEF])


def test_the_prefix_check_fails_when_an_earlier_shard_was_missing_or_rebuilt(hub):
    store, register, run = hub
    register("s1", "s2")
    store.write_partitions("text_personas", personas("s1", [SAILOR]), partitions=["s1"])
    store.write_partitions("text_personas", personas("s2", [SAILOR, CHEF]), partitions=["s2"])

    out_of_order = run("s2")  # s1 is registered first but has no hub yet
    assert not out_of_order.success  # the blocking check stops what depends on the hub
    failed = check(out_of_order, "prefix_complete")
    assert not failed.passed and failed.metadata["incomplete_prefix"].value == {"s2": ["s1"]}
    assert decisions(store, "s2")[SAILOR]["decision"] == "kept"  # nothing to compare with: the duplicate got in

    run("s1")
    rebuilt = check(run("s1"), "prefix_complete")  # s2 was still built without s1
    assert not rebuilt.passed and rebuilt.metadata["rebuild_in_order"].value == ["s2"]

    fixed = run("s2")
    assert check(fixed, "prefix_complete").passed
    assert decisions(store, "s2")[SAILOR]["duplicate_of_shard"] == "s1"


def test_rerunning_a_shard_replaces_its_rows_everywhere(hub):
    store, register, run = hub
    register("s1")
    store.write_partitions("text_personas", personas("s1", [SAILOR, CHEF, TEACHER]), partitions=["s1"])
    run("s1")
    store.write_partitions("text_personas", personas("s1", [PILOT]), partitions=["s1"])
    run("s1")
    assert store.read("persona_hub")["persona"].to_list() == [PILOT]
    assert store.read("persona_hub_decisions")["persona"].to_list() == [PILOT]
    assert store.read(HUB_MINHASH_BANDS)["persona_id"].unique().to_list() == [content_id(PILOT)]
    assert store.read(HUB_RUNS).height == 1


def test_expanded_personas_are_candidates_too(hub):
    store, register, run = hub
    register("s1")
    store.write_partitions("text_personas", personas("s1", [NURSE]), partitions=["s1"])
    expanded = personas("s1", [NURSE, PILOT]).with_columns(
        hop=pl.lit(1), parent_persona_id=pl.lit(content_id(NURSE)), root_persona_id=pl.lit(content_id(NURSE))
    )
    store.write_partitions("expanded_personas", expanded, partitions=["s1"])
    run("s1")
    d = store.read("persona_hub_decisions").sort("position")
    assert d["source"].to_list() == ["text_personas", "expanded_personas", "expanded_personas"]
    assert d["decision"].to_list() == ["kept", "dropped", "kept"]  # the text persona came first
    hub_rows = store.read("persona_hub")
    assert hub_rows.filter(pl.col("persona") == PILOT)["parent_persona_id"].to_list() == [content_id(NURSE)]


def test_changed_settings_are_reported(hub):
    store, register, run = hub
    register("s1")
    store.write_partitions("text_personas", personas("s1", [SAILOR, CHEF]), partitions=["s1"])
    assert check(run("s1"), "hub_config_consistent").passed
    result = run("s1", run_config={"ops": {"build_persona_hub": {"config": {"minhash_threshold": 0.8}}}})
    warned = check(result, "hub_config_consistent")
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN

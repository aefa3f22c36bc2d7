"""The hub's persistent cross-shard index (lib/dedup/index.py): lookups by band key and by vector, shards added and
removed exactly, the object-store mirror; and the hub on it: the same decisions as the whole-table lookups it
replaced (locally and on S3), re-runs and unregistered shards leaving it, hubs from before the index upgraded."""

import dagster as dg
import numpy as np
import polars as pl
import pytest

from persona_hub_dagster.defs.hub.assets import build_persona_hub
from persona_hub_dagster.defs.hub.checks import prefix_complete
from persona_hub_dagster.defs.models import EmbeddingsResource
from persona_hub_dagster.defs.partitions import text_shards
from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource
from persona_hub_dagster.lib import tables
from persona_hub_dagster.lib.dedup import build, vector_lists
from persona_hub_dagster.lib.dedup import index as index_module
from persona_hub_dagster.lib.dedup.build import index_layout, open_index
from persona_hub_dagster.lib.dedup.hub import HubSettings, dedup_shard, load_candidates
from persona_hub_dagster.lib.dedup.index import HubIndex, ShardEntries
from persona_hub_dagster.lib.ids import content_id
from persona_hub_dagster.lib.shard_files import ShardFile
from persona_hub_dagster.lib.shards import ShardRegistry, unregister_shard
from persona_hub_dagster_tests.helpers.hub_reference import WholeTablePrior
from persona_hub_dagster_tests.helpers.hub_run import personas

LAYOUT = {"num_perm": 128, "seed": 1, "ngram": 1, "bands": 10, "rows": 12}
DIM = 32


def entries(shard, keys, vectors=None, first_position=0):
    n = len(keys)
    positions = np.arange(first_position, first_position + n)
    vectors = np.zeros((0, 0), np.float32) if vectors is None else vectors
    return ShardEntries(
        shard,
        f"run-{shard}",
        positions,
        [f"{shard}-{p}" for p in positions],
        [f"text of {shard} {p}" for p in positions],
        np.asarray(keys, dtype=np.uint64),
        np.zeros((n, LAYOUT["num_perm"]), dtype=np.uint8),
        positions[: len(vectors)],
        vectors,
        "model" if len(vectors) else None,
    )


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(rng, v, noise=0.15):
    out = v + noise * rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(DIM)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_band_keys_find_the_earliest_shards_personas_and_only_those_of_the_prefix(tmp_path):
    with HubIndex(tmp_path / "index") as index:
        index.add(entries("a", [[1] * 10, [2] * 10]), LAYOUT)
        index.add(entries("b", [[1] * 10, [3] * 10]), LAYOUT)
        probe = np.array([[1] * 10, [3] + [9] * 9, [7] * 10], dtype=np.uint64)
        hits = index.band_hits(probe, index.ranks(["a", "b"]))
        sid = {s: e.sid for s, e in index.manifest.shards.items()}
        assert {tuple(h) for h in hits.tolist()} == {(0, sid["a"], 0), (0, sid["b"], 0), (1, sid["b"], 1)}
        only_a = index.band_hits(probe, index.ranks(["a"]))
        assert {tuple(h) for h in only_a.tolist()} == {(0, sid["a"], 0)}
        assert index.personas(np.array([sid["b"]]), np.array([1])) == (["b-1"], ["text of b 1"])


@pytest.mark.parametrize("probes_per_get, hits_per_part", [(1, 1), (3, 7), (50_000, 500_000)])
def test_a_band_key_many_earlier_personas_hold_costs_only_the_plausible_ones(
    tmp_path, monkeypatch, probes_per_get, hits_per_part
):
    """Sixty earlier personas share a band key with the candidates and only a few are near-duplicates: each
    candidate still gets its earliest verified match (rank, then position), however the lookup is cut into parts,
    and only the texts whose sketches make them plausible are fetched."""
    monkeypatch.setattr(index_module, "PROBES_PER_GET", probes_per_get)
    monkeypatch.setattr(index_module, "HITS_PER_PART", hits_per_part)
    nurse = "a nurse who runs night shifts at a rural clinic and teaches first aid to farmers on weekends"
    baker = "ein Bäcker aus Leipzig, der Sauerteig züchtet und samstags auf dem Markt Brot verkauft"
    settings = HubSettings()

    def shard(name, n, texts_at):
        positions = np.arange(n) * 3  # hub positions have gaps where candidates were dropped
        texts = [
            texts_at.get(p, f"{name} persona number {p} who collects stamps from year {1900 + p}") for p in positions
        ]
        keys, sketches = build.minhash_entries_of(texts, settings)
        keys[:, 0] = 42  # the key they all hold
        ids = [f"{name}-{p}" for p in positions]
        return ShardEntries(
            name,
            f"run-{name}",
            positions,
            ids,
            texts,
            keys,
            sketches,
            positions[:0],
            np.zeros((0, 0), np.float32),
            None,
        )

    with HubIndex(tmp_path / "index") as index:
        index.add(shard("a", 50, {90: nurse}), index_layout(settings))
        index.add(shard("b", 10, {0: nurse, 27: baker}), index_layout(settings))
        fetched = []
        real_personas = index.personas
        monkeypatch.setattr(
            index,
            "personas",
            lambda sid, pos: fetched.extend(zip(sid.tolist(), pos.tolist(), strict=True)) or real_personas(sid, pos),
        )
        candidates = [nurse, "nothing like any of them at all", baker, nurse, baker + " und Kuchen"]
        keys, sketches = build.minhash_entries_of(candidates, settings)
        keys[[0, 1, 2, 4], 0] = 42
        keys[3] = 7  # row 3 shares no key with anyone: a copy that LSH missed stays missed
        found = build.IndexedPrior(index).minhash_matches(["a", "b"], candidates, keys, sketches, settings)
        sid = {s: e.sid for s, e in index.manifest.shards.items()}
    assert {row: m[:2] for row, m in found.items()} == {0: ("a-90", "a"), 2: ("b-27", "b"), 4: ("b-27", "b")}
    assert found[0][2] == 1.0 and 0.9 <= found[4][2] < 1.0
    assert set(fetched) <= {(sid["a"], 90), (sid["b"], 0), (sid["b"], 27)}


def _bytes_read() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar")).split()[1])


def test_a_reopened_index_probes_through_bloom_filters_and_older_files_are_rewritten_with_them(tmp_path):
    """rocksdict reopens a database with the options saved in its folder unless told otherwise (no bloom filter:
    every missing key read data blocks). Files written that way are rewritten once by upgrade_tables."""
    from rocksdict import Options, Rdict

    rng = np.random.default_rng(5)
    missing = np.array(rng.integers(0, 2**62, (3_000, 10)), dtype=np.uint64)
    missing[:, 1] = rng.integers(0, 1_200_000 * 7919, 3_000) * 2 + 1  # inside the range of the keys written below

    def probe_bytes(index):
        index.band_hits(missing[:10], index.ranks(["a"]))  # opens the files
        before = _bytes_read()
        index.band_hits(missing, index.ranks(["a"]))
        return _bytes_read() - before

    with HubIndex(tmp_path / "index") as index:
        index.add(entries("a", rng.integers(0, 2**62, (20_000, 10))), LAYOUT)
    old = Rdict(str(tmp_path / "index" / "rocksdb"), Options(raw_mode=True))  # how the index reopened before
    for k in range(0, 1_200_000, 2):
        old[b"b\x00\x01" + int(k * 7919).to_bytes(8, "big")] = b"\x00" * 8
    old.flush()
    old.close()
    with HubIndex(tmp_path / "index") as index:
        assert index.manifest.table_format == 0
        unfiltered = probe_bytes(index)
        assert index.upgrade_tables() and not index.upgrade_tables()
        assert index.db.property_value("rocksdb.block-cache-capacity") == str(index_module.BLOCK_CACHE_BYTES)
        filtered = probe_bytes(index)
    assert filtered * 3 < unfiltered, (unfiltered, filtered)  # measured: 2.6 MB against 0.6 MB
    assert HubIndex(tmp_path / "index").manifest.table_format == index_module.TABLE_FORMAT


def test_unique_rows_are_numpys():
    rng = np.random.default_rng(1)
    for n in (1, 2, 50, 5_000):
        rows = rng.integers(0, 5, (n, 3))
        assert (index_module.unique_rows(rows) == np.unique(rows, axis=0)).all()
    assert index_module.unique_rows(np.zeros((0, 3), dtype=np.int64)).shape == (0, 3)


def test_an_index_without_sketches_asks_for_them_and_is_completed_from_its_own_texts(tmp_path):
    settings = HubSettings()
    texts = ["a potter who fires raku bowls in her garden kiln", "一位研究城市交通政策的经济学者，关注自动驾驶"]
    keys, sketches = build.minhash_entries_of(texts, settings)
    with HubIndex(tmp_path / "index") as index:
        positions = np.array([4, 11])
        ids = ["p-4", "p-11"]
        index.add(
            ShardEntries(
                "a", "run-a", positions, ids, texts, keys, sketches, positions[:0], np.zeros((0, 0), np.float32), None
            ),
            index_layout(settings),
        )
        for path in (index.folder / "segments").glob("*-sketches.npy"):
            path.unlink()  # an index built before it kept sketches
        assert index.unsketched() == ["a"]
        prior = build.IndexedPrior(index)
        with pytest.raises(LookupError, match="catch_up_index"):
            prior.minhash_matches(["a"], texts, keys, sketches, settings)
        assert build.complete_sketches(index, settings) == ["a"] and index.unsketched() == []
        assert (index.sketches(np.array([index.manifest.shards["a"].sid] * 2), positions) == sketches).all()
        found = prior.minhash_matches(["a"], texts[::-1], keys[::-1], sketches[::-1], settings)
    assert {row: m[:2] for row, m in found.items()} == {0: ("p-11", "a"), 1: ("p-4", "a")}


@pytest.mark.parametrize("probes_per_get", [1, 50_000])  # keys read and rewritten one at a time, or at once
def test_removing_a_shard_removes_exactly_its_entries(tmp_path, monkeypatch, probes_per_get):
    monkeypatch.setattr(index_module, "PROBES_PER_GET", probes_per_get)
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3)
    with HubIndex(tmp_path / "index") as index:
        for shard in ("a", "b", "c"):
            index.add(entries(shard, [[1] * 10, [ord(shard)] * 10], vectors[:2]), LAYOUT)
        b = index.manifest.shards["b"].sid
        assert index.remove("b") and not index.remove("b")
        assert "b" not in index.manifest.shards
        # b's band entries and personas are gone from RocksDB; a's and c's are all there.
        shared = index.db.get(b"b" + (0).to_bytes(2, "big") + (1).to_bytes(8, "big"))
        assert set(np.frombuffer(shared, dtype=[("sid", "<u4"), ("pos", "<u4")])["sid"].tolist()) == {
            index.manifest.shards["a"].sid,
            index.manifest.shards["c"].sid,
        }
        assert index.db.get(b"b" + (0).to_bytes(2, "big") + ord("b").to_bytes(8, "big")) is None
        persona_keys = [k for k in index.db.keys() if k[:1] == b"p"]
        assert len(persona_keys) == 4 and all(int.from_bytes(k[1:5], "big") != b for k in persona_keys)
        assert not list((index.folder / "segments").glob(f"{b:08d}-*"))
        # Re-adding a shard gives it a new id: nothing of the old one can be mistaken for it.
        index.add(entries("b", [[1] * 10]), LAYOUT)
        assert index.manifest.shards["b"].sid > b


def test_vector_lookup_finds_the_earliest_match_with_its_exact_cosine(tmp_path):
    rng = np.random.default_rng(1)
    a, b = unit(rng, 50), unit(rng, 50)
    b[:10] = near(rng, a[:10])  # b's first ten duplicate a's
    queries = near(rng, a[:20], noise=0.05)
    with HubIndex(tmp_path / "index") as index:
        index.add(entries("a", [[i] * 10 for i in range(50)], a), LAYOUT)
        index.add(entries("b", [[100 + i] * 10 for i in range(50)], b), LAYOUT)
        found = index.vector_matches(queries, index.ranks(["a", "b"]), 0.9)
        exact = queries @ a.T
        for q in range(20):
            assert found.shard[q] == "a" and found.persona_id[q] == f"a-{q}"
            assert found.similarity[q] == pytest.approx(exact[q, q], abs=1e-5)
        only_b = index.vector_matches(queries, index.ranks(["b"]), 0.9)
        assert {s for s in only_b.shard if s} == {"b"}
        assert index.vector_matches(unit(rng, 5), index.ranks(["a", "b"]), 0.9).shard == [None] * 5


def test_planted_cross_shard_duplicates_are_found_after_training_and_retraining(tmp_path, monkeypatch):
    """Past TRAIN_AT vectors the index is an inverted file (lists probed, not all); its recall against an exact
    search stays >= 0.99, and retraining re-files every vector without losing one."""
    monkeypatch.setattr(vector_lists, "TRAIN_AT", 2_000)
    monkeypatch.setattr(vector_lists, "RETRAIN_GROWTH", 2)
    rng = np.random.default_rng(2)
    # Clustered data, as embeddings are: 40 topics, personas around them.
    topics = unit(rng, 40)
    shards = [near(rng, topics[rng.integers(0, 40, 1500)], noise=6.0) for _ in range(5)]
    with HubIndex(tmp_path / "index") as index:
        for k, vectors in enumerate(shards):
            index.add(entries(f"s{k}", np.arange(len(vectors) * 10).reshape(-1, 10) + k * 10**6, vectors), LAYOUT)
        assert index.manifest.nlist > 1 and index.manifest.generation >= 2  # trained, then retrained
        assert index.manifest.vectors == sum(len(v) for v in shards)
        prior = np.concatenate(shards)
        picks = rng.choice(len(prior), 400, replace=False)
        queries = near(rng, prior[picks], noise=0.3)
        found = index.vector_matches(queries, index.ranks([f"s{k}" for k in range(5)]), 0.9)
        exact = (queries @ prior.T >= 0.9).any(axis=1)
        recall = np.mean([found.shard[q] is not None for q in np.flatnonzero(exact)])
        assert exact.sum() > 300 and recall >= 0.99
        assert all(found.similarity[q] >= 0.9 for q in range(len(queries)) if found.shard[q])


def test_nearest_gives_the_exact_top_k_of_an_untrained_index_and_nearly_all_of_a_trained_one(tmp_path, monkeypatch):
    """Persona search: the k most similar kept personas, best first, with exact cosines; one list is an exact
    search, and past training (307 lists, 128 probed) the probed lists hold >= 0.95 of the exact top 10."""
    rng = np.random.default_rng(3)
    a, b = unit(rng, 300), unit(rng, 300)
    queries = near(rng, a[:5], noise=2.0)
    with HubIndex(tmp_path / "exact") as index:
        index.add(entries("a", np.arange(3000).reshape(-1, 10), a), LAYOUT)
        index.add(entries("b", np.arange(3000).reshape(-1, 10) + 10**6, b), LAYOUT)
        found = index.nearest(queries, 7)
        both = np.concatenate([a, b])
        for q, row in enumerate(found):
            best = np.argsort(-(queries[q] @ both.T), kind="stable")[:7]
            assert [n.persona_id for n in row] == [f"a-{i}" if i < 300 else f"b-{i - 300}" for i in best]
            assert [n.similarity for n in row] == pytest.approx((queries[q] @ both.T)[best].tolist(), abs=1e-5)
        assert {n.shard for row in index.nearest(queries, 7, ["b"]) for n in row} == {"b"}
        assert index.nearest(queries[:0], 3) == [] and [len(r) for r in index.nearest(queries, 0)] == [0] * 5
    monkeypatch.setattr(vector_lists, "TRAIN_AT", 2_000)
    topics = unit(rng, 40)
    vectors = near(rng, topics[rng.integers(0, 40, 12_000)], noise=6.0)
    with HubIndex(tmp_path / "trained") as index:
        index.add(entries("t", np.arange(120_000).reshape(-1, 10), vectors), LAYOUT)
        assert index.manifest.nlist > 2 * vector_lists.SEARCH_NPROBE  # 307 lists, 128 probed
        queries = near(rng, vectors[rng.choice(12_000, 100, replace=False)], noise=3.0)
        found = index.nearest(queries, 10)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        overlap = np.mean(
            [len({n.position for n in row} & set(e.tolist())) / 10 for row, e in zip(found, exact, strict=True)]
        )
        assert overlap >= 0.95


def test_the_mirror_on_s3_carries_the_index_to_another_machine(tmp_path, s3_bucket):
    location = f"s3://{s3_bucket}/hub/_index/persona_hub/lookup"
    rng = np.random.default_rng(3)
    vectors = unit(rng, 4)
    with HubIndex.for_location(location, str(tmp_path / "machine-1")) as first:
        first.add(entries("a", [[1] * 10, [2] * 10], vectors[:2]), LAYOUT)
        first.add(entries("b", [[3] * 10], vectors[2:3]), LAYOUT)
        sent = first.publish()
        assert sent["uploaded"] > 3 and sent["uploaded_bytes"] > 0
        assert first.publish()["uploaded_bytes"] < sent["uploaded_bytes"]  # nothing new: only the small mutable files
    with HubIndex.for_location(location, str(tmp_path / "machine-2")) as second:
        assert set(second.manifest.shards) == {"a", "b"}
        assert len(second.band_hits(np.array([[3] * 10], np.uint64), second.ranks(["a", "b"]))) == 1
        assert second.vector_matches(vectors[:1], second.ranks(["a"]), 0.99).persona_id == ["a-0"]
        second.remove("a")
        second.publish()
    with HubIndex.for_location(location, str(tmp_path / "machine-1")) as again:  # a stale cache catches up
        assert set(again.manifest.shards) == {"b"}
        assert not len(again.band_hits(np.array([[1] * 10], np.uint64), again.ranks(["a", "b"])))


# ---------------------------------------------------------------------------------------------------- the hub on it

OCCUPATIONS = ["nurse", "sailor", "chef", "teacher", "pilot", "farmer", "librarian", "welder", "violinist", "judge"]
PLACES = ["in Lisbon", "on a Greek island", "in rural Kansas", "in Osaka", "near the Andes", "in Lagos"]
HOBBIES = ["restores old clocks", "keeps bees", "runs marathons", "paints birds", "collects maps", "brews cider"]


def corpus(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"A {OCCUPATIONS[o]} {PLACES[p]} who {HOBBIES[h]} on weekends and {HOBBIES[g]} in the evenings, "
        f"known among friends as persona number {seed * 1000 + i}."
        for i, (o, p, h, g) in enumerate(rng.integers(0, [10, 6, 6, 6], size=(n, 4)))
    ]


def shard_texts() -> dict[str, list[str]]:
    """Three shards with planted near-duplicates: word edits (MinHash) and rephrasings (embeddings), within and
    across shards, some of them of personas two shards back."""
    s1 = corpus(1, 30)
    s2 = corpus(2, 25) + [
        s1[0].replace("on weekends", "on sunny weekends"),  # MinHash, across
        s1[1].replace("known among friends as", "whom friends call"),  # rephrased, across
        s1[2],  # an exact copy, across
    ]
    s2 += [s2[3].replace("in the evenings", "in the quiet evenings")]  # within s2
    s3 = corpus(3, 25) + [
        s1[3].replace("on weekends", "on long weekends"),  # two shards back
        s2[4].replace("on weekends", "on rainy weekends"),
        s1[0].replace("on weekends", "on sunny weekends") + " Really.",  # a duplicate of s1's persona, not of s2's copy
    ]
    return {"s1": s1, "s2": s2, "s3": s3}


@pytest.fixture
def hub_on(storage_root, tmp_path, instance, monkeypatch):
    monkeypatch.setenv(index_module.INDEX_CACHE_ENV, str(tmp_path / "index-cache"))
    storage = DeltaStorageResource(root=storage_root)
    store = storage.store()
    resources = {"storage": storage, "io_manager": DeltaIOManager(storage=storage), "embeddings": EmbeddingsResource()}
    texts = shard_texts()
    ShardRegistry(store).register(
        [ShardFile(s, f"/data/{s}.jsonl", "jsonl", None, 1, None) for s in texts], registered_by="test"
    )
    instance.add_dynamic_partitions(text_shards.name, list(texts))
    for shard, shard_personas in texts.items():
        store.write_partitions("text_personas", personas(shard, shard_personas), partitions=[shard])

    def run(partition_key):
        result = dg.materialize(
            [build_persona_hub, prefix_complete],
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            raise_on_error=False,  # prefix_complete fails (blocking) once an earlier shard is re-run: as it should
        )
        assert result.is_node_success("build_persona_hub")
        return result

    return store, run, texts, resources


DECISION_COLUMNS = ["persona_id", "decision", "reason", "duplicate_of", "duplicate_of_shard"]


def test_the_index_gives_the_decisions_of_the_whole_table_lookups(hub_on):
    store, run, texts, resources = hub_on
    for shard in texts:
        run(shard)
    embedder = resources["embeddings"].lazy_embedder(store)
    settings = HubSettings()
    for k, shard in enumerate(texts):
        reference = dedup_shard(
            WholeTablePrior(store, embedder),
            shard,
            load_candidates(store, shard),
            prefix=list(texts)[:k],
            settings=settings,
            embedder=embedder,
            run_id="reference",
        ).decisions.sort("position")
        built = store.read(tables.PERSONA_HUB_DECISIONS, [shard]).sort("position")
        assert built.select(DECISION_COLUMNS).equals(reference.select(DECISION_COLUMNS)), shard
        assert np.allclose(
            built["similarity"].fill_null(-1).to_numpy(), reference["similarity"].fill_null(-1).to_numpy(), atol=1e-5
        )
    # The planted duplicates were all found, each for the earliest persona it duplicates.
    s2 = planted(store, "s2", 4)
    assert s2["reason"].to_list() == ["minhash", "semantic", "minhash", "minhash"]
    assert s2["duplicate_of_shard"].to_list() == ["s1", "s1", "s1", "s2"]
    s3 = planted(store, "s3", 3)
    assert s3["duplicate_of_shard"].to_list() == ["s1", "s2", "s1"]
    assert s3["duplicate_of"].to_list()[-1] == content_id(texts["s1"][0])


def planted(store, shard, n) -> pl.DataFrame:
    """The decisions of the last n candidates of a shard (where shard_texts plants its duplicates)."""
    return store.read(tables.PERSONA_HUB_DECISIONS, [shard]).sort("position").tail(n)


def test_a_rerun_or_unregistered_shard_leaves_the_index(hub_on):
    store, run, texts, _ = hub_on
    for shard in texts:
        run(shard)
    with open_index(store) as index:
        before = dict(index.manifest.shards)
    run("s2")  # a re-run replaces its entries under a new shard id
    with open_index(store) as index:
        assert index.manifest.shards["s2"].sid != before["s2"].sid
        assert index.manifest.shards["s1"] == before["s1"]
        stale = before["s2"].sid
        assert not [k for k in index.db.keys() if k[:1] == b"p" and int.from_bytes(k[1:5], "big") == stale]
    unregister_shard(store, "s1")
    run("s3")  # the next hub run finds s1 gone from the tables and takes it out of the index
    with open_index(store) as index:
        assert set(index.manifest.shards) == {"s2", "s3"}
        gone = before["s1"].sid
        assert not [k for k in index.db.keys() if k[:1] == b"p" and int.from_bytes(k[1:5], "big") == gone]
        for value in (v for k, v in index.db.items() if k[:1] == b"b"):
            assert gone not in np.frombuffer(value, dtype=[("sid", "<u4"), ("pos", "<u4")])["sid"]
    # s3 no longer has s1 to duplicate: its copies of s1's personas are kept now.
    s3 = store.read(tables.PERSONA_HUB_DECISIONS, ["s3"])
    assert "s1" not in s3["duplicate_of_shard"].drop_nulls().to_list()


def test_a_hub_built_before_the_index_gets_one_on_first_use(hub_on):
    store, run, texts, _ = hub_on
    run("s1")
    run("s2")
    with open_index(store) as index:
        kept = {s: e.kept for s, e in index.manifest.shards.items()}
        index.clear()  # what a hub from before the index looks like: tables, no index
    run("s3")
    with open_index(store) as index:
        assert {s: e.kept for s, e in index.manifest.shards.items() if s != "s3"} == kept
        assert index.manifest.layout == index_layout(HubSettings())
    assert planted(store, "s3", 3)["duplicate_of_shard"].to_list() == ["s1", "s2", "s1"]


def test_an_index_from_before_sketches_is_completed_by_the_next_hub_run(hub_on):
    store, run, texts, _ = hub_on
    run("s1")
    run("s2")
    with open_index(store) as index:
        for path in (index.folder / "segments").glob("*-sketches.npy"):
            path.unlink()
    run("s3")
    with open_index(store) as index:
        assert index.unsketched() == []
    assert planted(store, "s3", 3)["duplicate_of_shard"].to_list() == ["s1", "s2", "s1"]


def test_a_shard_whose_candidates_were_all_dropped_is_built_and_stays_in_the_index(hub_on):
    # Found by the production topology: a shard of two names ("Ethan A. Thompson") keeps no persona, so persona_hub
    # has no partition for it; the shards after it must still count it as built, and the index must keep it.
    store, run, texts, _ = hub_on
    store.write_partitions("text_personas", personas("s2", ["Liam Black", "Ethan A. Thompson"]), partitions=["s2"])
    run("s1")
    run("s2")
    assert "s2" not in store.partitions(tables.PERSONA_HUB)
    assert set(store.read(tables.PERSONA_HUB_DECISIONS, ["s2"])["reason"]) == {"quality:too_short"}
    result = run("s3")
    assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
    assert store.read(tables.HUB_RUNS, ["s3"])["prefix_present"].to_list() == [["s1", "s2"]]
    with open_index(store) as index:
        assert index.manifest.shards["s2"].kept == 0
        built = {s: e.sid for s, e in index.manifest.shards.items()}
    run("s3")  # catching up again finds nothing to change
    with open_index(store) as index:
        assert {s: e.sid for s, e in index.manifest.shards.items() if s != "s3"} == {
            s: sid for s, sid in built.items() if s != "s3"
        }

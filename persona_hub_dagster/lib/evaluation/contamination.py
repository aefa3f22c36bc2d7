"""Benchmark contamination: does a synthetic item reproduce a record of a benchmark's test set?

Two checks, both built to scale (10^5 items against 10^4 benchmark records in seconds, never an all-pairs loop):
- Long n-gram overlap, the convention of the decontamination literature (GPT-3, Llama): 13-grams of normalized
  words (NFKC, case-folded, word characters only). Every 13-gram of every benchmark record is hashed into one sorted
  array; the items' 13-grams are looked up in it with a vectorized binary search. An item that shares any 13-gram is
  flagged, with the record it shares the most with and the shared words as evidence.
- Embedding nearest neighbour: each item's most similar benchmark record by cosine (an exact inner-product FAISS
  index), flagged at or above a threshold. It catches light paraphrases whose 13-grams were all broken by edits.

Items with fewer than 13 words cannot share a 13-gram; the embedding check still covers them.
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from persona_hub_dagster.lib import filesystems
from persona_hub_dagster.lib.locations import normalize_location

BENCHMARKS_ENV = "PERSONA_HUB_BENCHMARKS"
NGRAM = 13
# Embedding cosine at or above which an item counts as a paraphrase of a benchmark record (MiniLM scale; light edits
# of a math problem score 0.93-0.99, another problem on the same topic 0.5-0.8: see the tests).
EMBEDDING_THRESHOLD = 0.9
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): a polynomial hash over word hashes

FLAG_SCHEMA = {
    "item_index": pl.Int64,
    "benchmark": pl.String,
    "benchmark_index": pl.Int64,
    "method": pl.String,  # ngram13 | embedding
    "score": pl.Float64,  # share of the item's 13-grams found in the record, or the cosine
    "evidence": pl.String,  # the shared words, or the start of the matched record
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    texts: Sequence[str]
    uri: str = ""


def read_texts(uri: str, field: str = "text") -> list[str]:
    """The `field` of every record of a JSONL, Parquet or CSV file (local or object store), in file order."""
    suffix = uri.lower().rsplit("/", 1)[-1]
    with filesystems.open_binary(normalize_location(uri)) as handle:
        data = io.BytesIO(handle.read())
    if suffix.endswith((".jsonl", ".ndjson", ".json")):
        frame = pl.read_ndjson(data, infer_schema_length=None)
    elif suffix.endswith(".parquet"):
        frame = pl.read_parquet(data)
    elif suffix.endswith(".csv"):
        frame = pl.read_csv(data, infer_schema_length=0)
    else:
        raise ValueError(f"{uri}: not a .jsonl, .parquet or .csv file")
    if field not in frame.columns:
        raise ValueError(f"{uri} has no field {field!r} (it has {frame.columns[:12]})")
    return frame[field].cast(pl.String).fill_null("").to_list()


def configured_benchmarks() -> list[str]:
    """PERSONA_HUB_BENCHMARKS: comma-separated NAME=PATH[#FIELD] specs (none: contamination is not checked)."""
    return [spec.strip() for spec in os.environ.get(BENCHMARKS_ENV, "").split(",") if spec.strip()]


def benchmark_from_spec(spec: str) -> Benchmark:
    """`NAME=PATH[#FIELD]` (the field defaults to `text`), e.g. `gsm8k=/data/gsm8k_test.jsonl#question`."""
    name, separator, location = spec.partition("=")
    if not separator or not name.strip() or not location.strip():
        raise ValueError(f"A benchmark is NAME=PATH[#FIELD], not {spec!r}")
    path, _, field = location.strip().partition("#")
    return Benchmark(name.strip(), read_texts(path, field or "text"), uri=path)


@dataclass(frozen=True)
class NgramIndex:
    """Every 13-gram hash of a benchmark, sorted, with the record it first occurs in."""

    hashes: np.ndarray  # uint64, sorted, unique
    records: np.ndarray  # int64, the record of each hash

    @classmethod
    def build(cls, texts: Sequence[str], n: int = NGRAM) -> NgramIndex:
        grams, owners, _ = ngram_hashes(texts, n)
        order = np.lexsort((owners, grams))
        grams, owners = grams[order], owners[order]
        first = np.ones(len(grams), dtype=bool)
        first[1:] = grams[1:] != grams[:-1]
        return cls(grams[first], owners[first])

    def lookup(self, grams: np.ndarray) -> np.ndarray:
        """For each hash, the record it occurs in, or -1."""
        if not len(self.hashes):
            return np.full(len(grams), -1, dtype=np.int64)
        position = np.searchsorted(self.hashes, grams).clip(max=len(self.hashes) - 1)
        return np.where(self.hashes[position] == grams, self.records[position], -1)


def words(texts: Sequence[str]) -> pl.Series:
    """Each text as its normalized words (NFKC, case-folded, runs of word characters)."""
    normalized = [unicodedata.normalize("NFKC", t or "").casefold() for t in texts]
    return pl.Series(normalized, dtype=pl.String).str.extract_all(r"\w+")


def ngram_hashes(texts: Sequence[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash of every n-gram, the text it belongs to, its first word's position in that text), vectorized: the
    words of all texts are hashed once, then each n-gram's hash is a polynomial over n consecutive word hashes."""
    tokens = words(texts)
    lengths = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = tokens.explode().drop_nulls()
    if flat.is_empty():
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    word_hashes = flat.hash(seed=0).to_numpy().astype(np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    windows = np.maximum(lengths - n + 1, 0)
    owners = np.repeat(np.arange(len(texts)), windows)
    offsets = np.arange(windows.sum()) - np.repeat(np.cumsum(windows) - windows, windows)
    first = np.repeat(starts, windows) + offsets
    grams = np.zeros(len(first), dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        for k in range(n):
            grams = grams * _MULTIPLIER + word_hashes[first + k]
    return grams, owners.astype(np.int64), offsets.astype(np.int64)


def ngram_overlaps(items: Sequence[str], benchmark: Benchmark, index: NgramIndex | None = None) -> pl.DataFrame:
    """Items sharing at least one 13-gram with the benchmark (FLAG_SCHEMA rows, method ngram13)."""
    index = index or NgramIndex.build(benchmark.texts)
    grams, owners, offsets = ngram_hashes(items)
    matched = index.lookup(grams)
    hit = matched >= 0
    if not hit.any():
        return pl.DataFrame(schema=FLAG_SCHEMA)
    per_item = np.bincount(owners, minlength=len(items))
    hits = pl.DataFrame({"item": owners[hit], "record": matched[hit], "offset": offsets[hit]})
    best = (
        hits.group_by("item", "record")
        .agg(shared=pl.len(), offset=pl.col("offset").min())
        .sort(["item", "shared", "record"], descending=[False, True, False])
        .unique("item", keep="first", maintain_order=True)
    )
    tokens = words([items[i] for i in best["item"]])
    evidence = [
        " ".join(token_list[offset : offset + NGRAM])
        for token_list, offset in zip(tokens.to_list(), best["offset"].to_list(), strict=True)
    ]
    return pl.DataFrame(
        {
            "item_index": best["item"],
            "benchmark": [benchmark.name] * best.height,
            "benchmark_index": best["record"],
            "method": ["ngram13"] * best.height,
            "score": (best["shared"] / per_item[best["item"].to_numpy()]).round(4),
            "evidence": evidence,
        },
        schema=FLAG_SCHEMA,
    )


def embedding_neighbours(
    item_vectors: np.ndarray,
    benchmark_vectors: np.ndarray,
    benchmark: Benchmark,
    *,
    threshold: float = EMBEDDING_THRESHOLD,
) -> pl.DataFrame:
    """Items whose nearest benchmark record (cosine, L2-normalized vectors) is at or above `threshold`."""
    import faiss

    if not len(item_vectors) or not len(benchmark_vectors):
        return pl.DataFrame(schema=FLAG_SCHEMA)
    index = faiss.IndexFlatIP(benchmark_vectors.shape[1])
    index.add(np.ascontiguousarray(benchmark_vectors, dtype=np.float32))
    scores, neighbours = index.search(np.ascontiguousarray(item_vectors, dtype=np.float32), 1)
    flagged = np.flatnonzero(scores[:, 0] >= threshold)
    records = neighbours[flagged, 0]
    return pl.DataFrame(
        {
            "item_index": flagged,
            "benchmark": [benchmark.name] * len(flagged),
            "benchmark_index": records,
            "method": ["embedding"] * len(flagged),
            "score": np.round(scores[flagged, 0].astype(np.float64), 4),
            "evidence": [" ".join(benchmark.texts[r].split())[:160] for r in records.tolist()],
        },
        schema=FLAG_SCHEMA,
    )


def contamination(
    items: Sequence[str],
    benchmarks: Sequence[Benchmark],
    *,
    encode=None,
    threshold: float = EMBEDDING_THRESHOLD,
) -> pl.DataFrame:
    """Every flag of every item against every benchmark: 13-gram overlaps, and embedding neighbours when `encode`
    (texts -> L2-normalized vectors) is given. An item can be flagged by both methods."""
    flags = []
    item_vectors = encode(list(items)) if encode is not None and benchmarks else None
    for benchmark in benchmarks:
        flags.append(ngram_overlaps(items, benchmark))
        if item_vectors is not None:
            flags.append(
                embedding_neighbours(item_vectors, encode(list(benchmark.texts)), benchmark, threshold=threshold)
            )
    if not flags:
        return pl.DataFrame(schema=FLAG_SCHEMA)
    return pl.concat(flags).sort("item_index", "benchmark", "method")

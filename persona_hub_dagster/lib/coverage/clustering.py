"""The hub's coverage map: k-means clusters of its personas, each with the terms that set it apart.

Clusters are trained with FAISS's spherical k-means on the embeddings the hub already stores (the vectors its semantic
dedup compared: `_index/persona_hub/embeddings`), on a bounded sample of the whole hub, and every persona is assigned
to its nearest centroid with that cosine. k follows the hub's size (`choose_k`: ~2 sqrt(n), at most MAX_K, so that
a person can read the list and a kind with a few percent of the hub gets clusters of its own); a setting overrides it.

A persona the embedding model cannot read (a Thai persona under the English default, see lib/embeddings.py) has no
vector. It is not left out: it belongs to its script's stratum, a cluster of its own with a negative id
(`script_stratum`), so that an even draw reaches the Thai personas as one kind of people too. A multilingual embedding
model (PERSONA_HUB_EMBEDDING_MODEL) puts them in the clusters proper.

Clusters are grouped into ~sqrt(k) regions (`group_into_regions`), which the synthesis tasks' even draws go across
first (lib/coverage/selection.py).

Labels are class-based TF-IDF (c-TF-IDF, as BERTopic): a term's frequency in the cluster times log(1 + the average
cluster's length / the term's frequency across all clusters), over the hub's units of text (lib/dedup/scripts.py:
words; Han characters, joined into neighbouring pairs here because a Chinese word is mostly two characters; kana and
Thai letter pairs), plus each cluster's most central persona as its example.

A clustering is kept until it no longer fits (`needs_reclustering`): when asked, when the embedding model changed,
when the hub has grown GROWTH_TO_RECLUSTER-fold since it was trained (k is for the hub's size), or when a new shard's
personas fall outside it: more than OUTLIER_SHARE_TO_RECLUSTER of them less similar to their centroid than the
least similar 5% of the sample's held-out part (`floor`: a fifth of the sample is kept out of k-means for it). By
construction ~5% of personas drawn like the sample fall below the floor; a shard of a kind of people the hub did not
hold before falls below it far more often.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from persona_hub_dagster.lib.dedup.scripts import HAN, unit_frame
from persona_hub_dagster.lib.embeddings import NAMED_SCRIPTS, dominant_scripts
from persona_hub_dagster.lib.ids import content_id

MAX_K = 256
SAMPLE_PER_CLUSTER = 256  # training vectors per centroid (FAISS's own cap); the sample is at most MAX_K * this
FLOOR_QUANTILE = 0.05  # the floor: this quantile of the held-out sample's similarity to its centroid
HELD_OUT_SHARE = 0.2  # of the sample, kept out of k-means to measure the floor on
MIN_HELD_OUT = 20
OUTLIER_SHARE_TO_RECLUSTER = 0.25  # 5x what a shard like the training sample shows
GROWTH_TO_RECLUSTER = 4
LABEL_TERMS = 3
TERMS = 8
EXAMPLE_CHARS = 160
# Words that head or join persona descriptions in the languages the bundled corpus holds; c-TF-IDF weighs common
# words down anyway, but "who" and "a" would still top a cluster that is all one template.
STOPWORDS = frozenset(
    "a an the and or of in on at to for with from by as is are was who whom whose that which this their his her its "
    "they he she it be been being has have had not but into about over than also very more most such some any "
    "ein eine einer der die das und oder mit für von zu im in den dem des sich ist er sie es un une le la les et "
    "des du en avec pour qui el los las y con para que".split()
)


@dataclass(frozen=True)
class Clustering:
    """A trained coverage map: centroids (rows L2-normalized) and what each cluster is; strata of unembedded scripts
    are clusters too (negative ids, no centroid)."""

    id: str
    model: str  # the embedding model's identity the centroids live in
    centroids: np.ndarray  # (k, dim) float32
    clusters: list[int]  # cluster ids in table order: 0..k-1, then the strata seen in the sample
    labels: list[str]
    terms: list[list[str]]
    examples: list[str]
    sizes: list[int]  # members in the training sample
    regions: list[int]  # per cluster (in `clusters` order) its region; a stratum is its own region
    floor: float
    trained_on: int  # hub personas when it was trained
    sample: int

    @property
    def k(self) -> int:
        return len(self.centroids)

    def label_of(self, cluster: int) -> str:
        if cluster in self.clusters:
            return self.labels[self.clusters.index(cluster)]
        return stratum_label(cluster, [])

    def region_of(self, cluster: int) -> int:
        return self.regions[self.clusters.index(cluster)] if cluster in self.clusters else cluster


def choose_k(personas: int) -> int:
    """Clusters for a hub of `personas`: ~2 sqrt(n) (35 for 300, 200 for 10,000), at most MAX_K. Fine enough that a
    kind of people with a few percent of the hub gets clusters of its own (with sqrt(n / 2), 12 for 300, four rare
    kinds shared one cluster); the regions then group them for even draws."""
    return int(min(MAX_K, max(1, round(2 * math.sqrt(personas)))))


def group_into_regions(centroids: np.ndarray) -> list[int]:
    """Per centroid its region: the centroids grouped by average-linkage agglomerative clustering on cosine distance
    into ~sqrt(k) regions, numbered by their first cluster. k-means gives a kind of people clusters in proportion to
    its personas (ten times as many for a kind ten times as frequent), so an even draw over clusters is nearly a
    uniform one; merging by distance does not count personas, so a region is a part of the map, dense or sparse,
    and an even draw over regions reaches the rare kinds (bench/RESULTS.md, "The coverage map")."""
    k = len(centroids)
    if k < 3:
        return list(range(k))
    from scipy.cluster.hierarchy import fcluster, linkage

    cut = fcluster(linkage(centroids.astype(np.float64), "average", metric="cosine"), regions_for(k), "maxclust")
    first: dict[int, int] = {}
    return [first.setdefault(int(group), len(first)) for group in cut]


def regions_for(k: int) -> int:
    return max(1, round(math.sqrt(k)))


def script_stratum(script: str) -> int:
    """The cluster id of a script's stratum: -1 - its place in NAMED_SCRIPTS (stable across clusterings)."""
    return -1 - NAMED_SCRIPTS.index(script)


def stratum_label(cluster: int, terms: Sequence[str]) -> str:
    name = f"{NAMED_SCRIPTS[-1 - cluster]} script (not embedded)"
    return f"{name}: {' · '.join(terms[:LABEL_TERMS])}" if terms else name


def train(
    vectors: np.ndarray,
    texts: Sequence[str],
    unembedded: Sequence[str],
    *,
    model: str,
    trained_on: int,
    k: int | None = None,
    seed: int = 0,
) -> Clustering:
    """A clustering from a sample of the hub: `vectors` with their `texts`, and the texts of sampled personas the
    model could not read (`unembedded`, grouped by script)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    held_out = np.random.default_rng(seed).random(len(vectors)) < HELD_OUT_SHARE
    if len(vectors) - held_out.sum() < 2 * MIN_HELD_OUT:
        held_out[:] = False  # too few to spare any: the floor is measured on the training personas
    k = min(k or choose_k(trained_on), int((~held_out).sum())) if len(vectors) else 0
    if k >= 2:
        kmeans = faiss.Kmeans(
            vectors.shape[1],
            k,
            niter=20,
            spherical=True,
            seed=seed + 1,
            max_points_per_centroid=SAMPLE_PER_CLUSTER,
            # A small hub has fewer than FAISS's 39 points per centroid by design (k ~ 2 sqrt(n)): no warning.
            min_points_per_centroid=1,
            verbose=False,
        )
        kmeans.train(vectors[~held_out])
        centroids = kmeans.centroids.astype(np.float32)
    elif k == 1:
        centroids = vectors.mean(axis=0, keepdims=True)
    else:
        centroids = np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    assigned, similarity = nearest_centroids(centroids, vectors)
    strata = [script_stratum(s) for s in dominant_scripts(unembedded)]
    members = np.concatenate([assigned, np.asarray(strata, dtype=np.int64)])
    all_texts = [*texts, *unembedded]
    clusters = list(range(k)) + sorted(set(strata), reverse=True)
    cluster_terms = distinctive_terms(all_texts, members, clusters)
    examples = []
    for cluster in clusters:
        if cluster >= 0 and (assigned == cluster).any():
            at = np.flatnonzero(assigned == cluster)
            examples.append(texts[int(at[np.argmax(similarity[at])])][:EXAMPLE_CHARS])
        else:
            at = np.flatnonzero(members == cluster)
            examples.append(all_texts[int(at[0])][:EXAMPLE_CHARS] if len(at) else "")
    labels = [
        " · ".join(terms[:LABEL_TERMS]) if cluster >= 0 else stratum_label(cluster, terms)
        for cluster, terms in zip(clusters, cluster_terms, strict=True)
    ]
    # On personas k-means did not see: the trained ones sit closer to centroids fitted to them (the more so the
    # smaller the clusters), and a shard like the sample would then seem to fall outside.
    unseen = similarity[held_out] if held_out.sum() >= MIN_HELD_OUT else similarity
    floor = float(np.quantile(unseen, FLOOR_QUANTILE)) if len(unseen) else 0.0
    sizes = [int((members == c).sum()) for c in clusters]
    regions = group_into_regions(centroids) + [c for c in clusters if c < 0]
    identity = content_id(f"{model}\x1f{trained_on}\x1f{seed}\x1f{centroids.tobytes().hex()[:4096]}")[:16]
    return Clustering(
        identity,
        model,
        centroids,
        clusters,
        labels,
        cluster_terms,
        examples,
        sizes,
        regions,
        floor,
        trained_on,
        len(all_texts),
    )


def nearest_centroids(centroids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each vector's nearest centroid, its cosine); all -1 / NaN where there are no centroids."""
    if not len(vectors) or not len(centroids):
        return np.full(len(vectors), -1, dtype=np.int64), np.full(len(vectors), np.nan, dtype=np.float32)
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    similarity, nearest = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return nearest[:, 0].astype(np.int64), similarity[:, 0].astype(np.float32)


@dataclass(frozen=True)
class Assignment:
    """A shard's personas placed on a clustering: per persona its cluster and cosine to the centroid (NaN for a
    stratum), and how many fell below the clustering's floor."""

    cluster: np.ndarray
    similarity: np.ndarray
    outliers: int
    embedded: int

    @property
    def outlier_share(self) -> float:
        return self.outliers / self.embedded if self.embedded else 0.0


def assign(clustering: Clustering, vectors: np.ndarray, has_vector: np.ndarray, texts: Sequence[str]) -> Assignment:
    """Clusters for personas in order: those with a vector (`has_vector`, rows of `vectors` in the same order) by
    nearest centroid, the others by their script's stratum."""
    n = len(has_vector)
    cluster = np.empty(n, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    embedded = np.flatnonzero(has_vector)
    nearest, cosine = nearest_centroids(clustering.centroids, vectors)
    cluster[embedded], similarity[embedded] = nearest, cosine
    rest = np.flatnonzero(~has_vector)
    cluster[rest] = [script_stratum(s) for s in dominant_scripts([texts[i] for i in rest.tolist()])]
    if len(embedded) and not len(clustering.centroids):  # a hub of unreadable scripts only, then readable text
        cluster[embedded] = script_stratum("Latin")
    outliers = int((cosine < clustering.floor).sum()) if len(clustering.centroids) else 0
    return Assignment(cluster, similarity, outliers, len(embedded))


def needs_reclustering(
    clustering: Clustering | None, *, model: str, hub_personas: int, assignment: Assignment | None = None
) -> str | None:
    """Why the clustering should be trained again, or None while it fits."""
    if clustering is None:
        return "no clustering yet"
    if clustering.model != model:
        return f"the embedding model changed ({clustering.model} -> {model})"
    if hub_personas >= GROWTH_TO_RECLUSTER * max(clustering.trained_on, 1) and choose_k(hub_personas) > clustering.k:
        return f"the hub grew {hub_personas / max(clustering.trained_on, 1):.1f}-fold since it was clustered"
    if assignment is not None and assignment.outlier_share > OUTLIER_SHARE_TO_RECLUSTER:
        return (
            f"{assignment.outlier_share:.0%} of the shard's personas are less similar to their cluster than the "
            f"least similar {FLOOR_QUANTILE:.0%} of the clustered sample (threshold {OUTLIER_SHARE_TO_RECLUSTER:.0%})"
        )
    return None


def distinctive_terms(texts: Sequence[str], members: np.ndarray, clusters: Sequence[int]) -> list[list[str]]:
    """Per cluster (in `clusters` order) its TERMS most distinctive terms by c-TF-IDF."""
    if not len(texts):
        return [[] for _ in clusters]
    units = unit_frame(texts)
    han = pl.col("tok").str.contains(rf"^{HAN}$")
    terms = (
        units.with_columns(next_tok=pl.col("tok").shift(-1).over("doc"))
        .with_columns(
            term=pl.when(han & pl.col("next_tok").str.contains(rf"^{HAN}$").fill_null(False))
            .then(pl.col("tok") + pl.col("next_tok"))
            .otherwise(pl.col("tok"))
        )
        .filter(~pl.col("term").is_in(list(STOPWORDS)) & (pl.col("term").str.len_chars() > 1) | han)
        .filter(~pl.col("term").str.contains(r"^\d+$"))
        .join(pl.DataFrame({"doc": np.arange(len(texts), dtype=np.uint32), "cluster": members}), on="doc")
    )
    counts = terms.group_by("cluster", "term").agg(tf=pl.len())
    totals = counts.group_by("term").agg(f=pl.col("tf").sum())
    average = counts["tf"].sum() / max(counts["cluster"].n_unique(), 1)
    scored = (
        counts.join(totals, on="term")
        .with_columns(size=pl.col("tf").sum().over("cluster"))
        .with_columns(score=pl.col("tf") / pl.col("size") * (1 + average / pl.col("f")).log())
        .sort(["cluster", "score", "term"], descending=[False, True, False])
        .group_by("cluster", maintain_order=True)
        .head(TERMS)
        .group_by("cluster", maintain_order=True)
        .agg("term")
    )
    by_cluster = dict(zip(scored["cluster"].to_list(), scored["term"].to_list(), strict=True))
    return [by_cluster.get(c, []) for c in clusters]

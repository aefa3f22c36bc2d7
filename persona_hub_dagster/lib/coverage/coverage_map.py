"""The coverage map as a picture: the clusters' centroids projected to 2-D (PCA of the centroids, so every shard of a
clustering is drawn in the same plane), each a disc sized by its personas in the hub, coloured by its region, the
largest labelled, with a sample of the shard's personas as points in their region's colour. Strata of unembedded
scripts have no place in the plane and are listed beside it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np

from persona_hub_dagster.lib.coverage.clustering import Clustering

POINTS = 3_000  # the shard's personas drawn (a deterministic sample)
LABELLED = 15  # the largest clusters get their label written beside them


def plane(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 2 x dim basis) of the centroids' first two principal components (padded with zeros when k < 3)."""
    mean = centroids.mean(axis=0) if len(centroids) else np.zeros(centroids.shape[1], dtype=np.float32)
    basis = np.zeros((2, centroids.shape[1]), dtype=np.float32)
    if len(centroids) >= 2:
        _, _, vt = np.linalg.svd(centroids - mean, full_matrices=False)
        basis[: min(2, len(vt))] = vt[:2]
    return mean, basis


def render(
    clustering: Clustering, hub_sizes: Mapping[int, int], vectors: np.ndarray, clusters: np.ndarray, title: str
) -> bytes:
    """The map as PNG bytes. `vectors` are the shard's embedded personas, `clusters` their clusters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # The bundled font lacks Han or Thai glyphs: such labels draw as boxes here (the metadata lists them in full),
        # which is no reason to warn on every materialization.
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        return _render(plt, clustering, hub_sizes, vectors, clusters, title)


def _render(plt, clustering, hub_sizes, vectors, clusters, title) -> bytes:
    figure, axes = plt.subplots(figsize=(10, 7), dpi=80)
    colours = plt.get_cmap("tab20")
    if clustering.k:
        mean, basis = plane(clustering.centroids)
        if len(vectors):
            take = np.random.default_rng(0).permutation(len(vectors))[:POINTS]
            points = (vectors[take] - mean) @ basis.T
            tint = [colours(clustering.region_of(int(c)) % 20) for c in clusters[take]]
            axes.scatter(points[:, 0], points[:, 1], s=4, c=tint, alpha=0.5)
        centres = (clustering.centroids - mean) @ basis.T
        sizes = np.array([hub_sizes.get(c, 0) for c in range(clustering.k)], dtype=np.float64)
        area = 30 + 600 * sizes / max(sizes.max(), 1)
        tint = [colours(clustering.region_of(c) % 20) for c in range(clustering.k)]
        axes.scatter(centres[:, 0], centres[:, 1], s=area, c=tint, edgecolors="k")
        for c in np.argsort(-sizes, kind="stable")[:LABELLED].tolist():
            label = f"{c}: {clustering.label_of(c)} ({int(sizes[c])})"
            axes.annotate(label, centres[c], fontsize=8, xytext=(4, 4), textcoords="offset points")
    strata = [(c, hub_sizes.get(c, 0)) for c in sorted(hub_sizes) if c < 0]
    if strata:
        listed = "\n".join(f"{clustering.label_of(c)}: {n}" for c, n in strata)
        axes.text(0.01, 0.01, listed, transform=axes.transAxes, fontsize=8, va="bottom")
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

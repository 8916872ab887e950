"""K-means with K chosen by G-means (Hamerly & Elkan 2003), hardened for text vectors.

Plain G-means splits a cluster while an Anderson-Darling test rejects normality of its points
projected on the axis between its two child centres; on 384-d text embeddings that overestimates K
several times. The safeguards: the test runs in at most `pca_dims` PCA dimensions, the two-way
split is fitted on one half of the cluster and tested on the other half (so the split cannot
manufacture the bimodality it tests), clusters never split below `min_cluster_size`, and K never
exceeds `k_max`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA


@dataclass
class Clustering:
    labels: np.ndarray
    centers: np.ndarray
    k: int
    method: str
    space: np.ndarray = field(repr=False)
    history: list[int] = field(default_factory=list)

    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).tolist()


def anderson_darling_pvalue(values: np.ndarray) -> float:
    """p-value of normality (mean and variance estimated), D'Agostino & Stephens (1986)."""
    from scipy.stats import norm

    n = len(values)
    std = values.std(ddof=1)
    if n < 8 or std == 0:
        return 1.0
    z = np.sort((values - values.mean()) / std)
    cdf = np.clip(norm.cdf(z), 1e-12, 1 - 1e-12)
    i = np.arange(1, n + 1)
    a2 = -n - np.mean((2 * i - 1) * (np.log(cdf) + np.log(1 - cdf[::-1])))
    a = min(a2 * (1 + 0.75 / n + 2.25 / n**2), 10.0)  # p < 1e-23 by 10; the fit turns back up past ~150
    if a >= 0.6:
        return math.exp(1.2937 - 5.709 * a + 0.0186 * a**2)
    if a >= 0.34:
        return math.exp(0.9177 - 4.279 * a - 1.38 * a**2)
    if a >= 0.2:
        return 1 - math.exp(-8.318 + 42.796 * a - 59.938 * a**2)
    return 1 - math.exp(-13.436 + 101.14 * a - 223.73 * a**2)


def _split_is_real(points: np.ndarray, alpha: float, min_size: int, rng: np.random.Generator) -> np.ndarray | None:
    """Two child centres if the split-half test says `points` are not one Gaussian, else None."""
    if len(points) < 2 * min_size:
        return None
    order = rng.permutation(len(points))
    fit_half, test_half = points[order[::2]], points[order[1::2]]
    children = KMeans(n_clusters=2, n_init=2, random_state=int(rng.integers(1 << 31))).fit(fit_half)
    axis = children.cluster_centers_[0] - children.cluster_centers_[1]
    if not np.any(axis):
        return None
    projected = test_half @ axis / (axis @ axis)
    if anderson_darling_pvalue(projected) >= alpha:
        return None
    full_assignment = children.predict(points)
    if np.bincount(full_assignment, minlength=2).min() < min_size:
        return None
    return children.cluster_centers_


def reduce_dimensions(vectors: np.ndarray, dims: int, seed: int) -> np.ndarray:
    dims = min(dims, vectors.shape[1], len(vectors))
    if dims >= vectors.shape[1]:
        return vectors.astype(np.float64)
    return PCA(n_components=dims, random_state=seed).fit_transform(vectors)


def gmeans(space: np.ndarray, alpha: float, min_size: int, k_max: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Centres found by G-means in `space`; also K after each round."""
    rng = np.random.default_rng(seed)
    centers = space.mean(axis=0, keepdims=True)
    history = [1]
    while len(centers) < k_max:
        assignment = KMeans(n_clusters=len(centers), init=centers, n_init=1).fit(space) if len(centers) > 1 else None
        labels = assignment.labels_ if assignment is not None else np.zeros(len(space), dtype=int)
        centers = assignment.cluster_centers_ if assignment is not None else centers
        new_centers = []
        for index, center in enumerate(centers):
            children = _split_is_real(space[labels == index], alpha, min_size, rng)
            new_centers.extend(children if children is not None else [center])
        if len(new_centers) == len(centers):
            break
        centers = np.asarray(new_centers[:k_max]) if len(new_centers) > k_max else np.asarray(new_centers)
        history.append(len(centers))
    return centers, history


def cluster(vectors: np.ndarray, k: int | str, alpha: float, min_size: int, k_max: int, pca_dims: int,
            seed: int) -> Clustering:
    """Final K-means in the reduced space, with K given or found by G-means."""
    space = reduce_dimensions(vectors, pca_dims, seed)
    if k == "auto":
        centers, history = gmeans(space, alpha, min_size, k_max, seed)
        final = KMeans(n_clusters=len(centers), init=centers, n_init=1).fit(space)
        method = f"G-means (alpha={alpha}, split-half Anderson-Darling in {space.shape[1]} PCA dims)"
    else:
        final = KMeans(n_clusters=int(k), n_init=3, random_state=seed).fit(space)
        history, method = [int(k)], "given"
    return Clustering(final.labels_, final.cluster_centers_, final.n_clusters, method, space, history)


def silhouette(space: np.ndarray, labels: np.ndarray, seed: int, max_rows: int = 5000) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return None
    size = min(max_rows, len(space))
    return float(silhouette_score(space, labels, sample_size=size, random_state=seed))

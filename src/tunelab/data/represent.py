"""How much a sample looks like its pool: label TV distance, cluster coverage and MMD^2.

Each number is reported beside the mean over random samples of the same size and the percentile of
ours among them (share of random samples at least as good): a low percentile means ours is better
than nearly every random sample.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

MMD_MAX_ROWS = 2000


def label_tv_distance(pool_labels: list, sample_labels: list) -> float:
    pool, sample = Counter(pool_labels), Counter(sample_labels)
    return 0.5 * sum(abs(pool[k] / len(pool_labels) - sample[k] / max(len(sample_labels), 1))
                     for k in pool.keys() | sample.keys())


def cluster_coverage(clusters: np.ndarray, picked: np.ndarray) -> float:
    return len(set(clusters[picked].tolist())) / len(set(clusters.tolist()))


class MMD:
    """Squared maximum mean discrepancy with an RBF kernel, bandwidth by the median heuristic."""

    def __init__(self, pool: np.ndarray, seed: int):
        rng = np.random.default_rng(seed)
        self.reference = pool[rng.choice(len(pool), min(MMD_MAX_ROWS, len(pool)), replace=False)]
        distances = self._squared_distances(self.reference[:500], self.reference[:500])
        self.gamma = 1.0 / max(float(np.median(distances[distances > 0])) if np.any(distances > 0) else 1.0, 1e-12)
        self.pool_term = self._kernel(self.reference, self.reference).mean()
        self.rng = rng

    @staticmethod
    def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-self.gamma * self._squared_distances(a, b))

    def __call__(self, sample: np.ndarray) -> float:
        if len(sample) > MMD_MAX_ROWS:
            sample = sample[self.rng.choice(len(sample), MMD_MAX_ROWS, replace=False)]
        return float(self.pool_term + self._kernel(sample, sample).mean()
                     - 2 * self._kernel(sample, self.reference).mean())


def representativeness(vectors: np.ndarray, labels: list, clusters: np.ndarray, picked: np.ndarray,
                       baselines: int, seed: int) -> dict:
    """Our sample's numbers beside random samples of the same size."""
    mmd = MMD(vectors, seed)
    has_labels = labels and labels[0] is not None

    def measure(indices: np.ndarray) -> dict[str, float]:
        values = {"cluster_coverage": cluster_coverage(clusters, indices), "mmd2": mmd(vectors[indices])}
        if has_labels:
            values["label_tv_distance"] = label_tv_distance(labels, [labels[i] for i in indices])
        return values

    ours = measure(picked)
    rng = np.random.default_rng(seed + 1)
    randoms = [measure(rng.choice(len(vectors), len(picked), replace=False)) for _ in range(baselines)]
    report = {}
    for key, value in ours.items():
        others = np.array([r[key] for r in randoms])
        higher_is_better = key == "cluster_coverage"
        at_least_as_good = (others >= value) if higher_is_better else (others <= value)
        report[key] = {
            "sample": value,
            "random_mean": float(others.mean()) if baselines else None,
            "random_std": float(others.std()) if baselines else None,
            "percentile": float(100 * at_least_as_good.mean()) if baselines else None,
        }
    return report

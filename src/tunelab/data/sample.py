"""Pick a training sample that looks like the pool: by cluster and label, or at random.

`kmeans` gives each label its share of the budget (largest remainder, at least `min_per_label`),
splits it among the label's clusters in proportion to their size, gives every cluster at least one
row, then picks inside each cell at random, nearest to the centroid, or by k-center (farthest-first).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def sample_size(requested: float, pool_size: int) -> int:
    return int(requested) if requested > 1 else max(1, round(requested * pool_size))


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[index] += 1
    return counts


def allocate(cells: list[tuple], sizes: np.ndarray, budget: int, min_per_label: int) -> np.ndarray:
    """Rows to take from each (label, cluster) cell.

    Each label first gets its share of the budget (largest remainder, raised to the label floor), and
    the share is split among the label's clusters in proportion. Rounding at the label level keeps the
    label mix: rounded cell by cell, a label spread thinly over many clusters (CLINC150's `oos`) lost
    most of its rows to the remainders of big single-cluster labels. Then every cluster gets a row,
    and rows come back from the labels furthest above their exact share until the budget holds.
    """
    by_cluster, by_label = defaultdict(list), defaultdict(list)
    for index, (label, cluster_id) in enumerate(cells):
        by_cluster[cluster_id].append(index)
        by_label[label].append(index)
    labels = list(by_label)
    label_sizes = np.array([sizes[by_label[label]].sum() for label in labels], dtype=float)
    exact_share = dict(zip(labels, label_sizes / label_sizes.sum() * budget, strict=True))
    label_floor = {label: min(min_per_label, int(size)) for label, size in zip(labels, label_sizes, strict=True)}
    quota = np.zeros(len(cells), dtype=int)
    for label, size, share in zip(labels, label_sizes, _largest_remainder(label_sizes, budget), strict=True):
        members = by_label[label]
        share = min(max(int(share), label_floor[label]), int(size))
        quota[members] = np.minimum(_largest_remainder(sizes[members].astype(float), share), sizes[members])
    for members in by_cluster.values():
        if quota[members].sum() == 0:
            quota[max(members, key=lambda i: sizes[i])] = 1
    label_total = {label: int(quota[members].sum()) for label, members in by_label.items()}
    cluster_total = {cluster_id: int(quota[members].sum()) for cluster_id, members in by_cluster.items()}

    def removable(index: int) -> bool:
        label, cluster_id = cells[index]
        return quota[index] > 0 and label_total[label] > label_floor[label] and cluster_total[cluster_id] > 1

    while quota.sum() > budget:
        candidates = [i for i in range(len(cells)) if removable(i)]
        if not candidates:
            break
        index = max(candidates, key=lambda i: (label_total[cells[i][0]] - exact_share[cells[i][0]], quota[i]))
        quota[index] -= 1
        label_total[cells[index][0]] -= 1
        cluster_total[cells[index][1]] -= 1
    return quota


def _pick(vectors: np.ndarray, members: np.ndarray, count: int, how: str, rng: np.random.Generator) -> np.ndarray:
    if count >= len(members):
        return members
    if how == "random":
        return rng.choice(members, size=count, replace=False)
    centroid = vectors[members].mean(axis=0)
    distance = np.linalg.norm(vectors[members] - centroid, axis=1)
    if how == "centroid":
        return members[np.argsort(distance, kind="stable")[:count]]
    chosen = [int(np.argmin(distance))]  # k-center: start central, then always the farthest row
    nearest = np.linalg.norm(vectors[members] - vectors[members[chosen[0]]], axis=1)
    while len(chosen) < count:
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(vectors[members] - vectors[members[chosen[-1]]], axis=1))
    return members[chosen]


def kmeans_sample(labels: list, clusters: np.ndarray, vectors: np.ndarray, budget: int, min_per_label: int,
                  within: str, seed: int) -> np.ndarray:
    """Sorted row indices of the sample."""
    rng = np.random.default_rng(seed)
    cell_of = defaultdict(list)
    for index, key in enumerate(zip(labels, clusters.tolist(), strict=True)):
        cell_of[key].append(index)
    cells = sorted(cell_of, key=str)
    sizes = np.array([len(cell_of[c]) for c in cells])
    quota = allocate(cells, sizes, budget, min_per_label)
    picked = [_pick(vectors, np.array(cell_of[c]), int(q), within, rng) for c, q in zip(cells, quota, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=int)


def random_sample(pool_size: int, budget: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(pool_size, size=budget, replace=False))

"""Near-duplicate groups by cosine distance, without a full n x n distance matrix.

Rows are compared in chunks within blocks: one block up to `BLOCK_ROWS` rows, else blocks from a
coarse k-means partition (near-duplicates are nearly always in the same coarse cluster). Pairs within
the threshold are joined into groups by connected components; each group keeps its first row.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BLOCK_ROWS = 20_000
CHUNK_ROWS = 1_024


def _blocks(vectors: np.ndarray, seed: int) -> list[np.ndarray]:
    n = len(vectors)
    if n <= BLOCK_ROWS:
        return [np.arange(n)]
    from sklearn.cluster import MiniBatchKMeans

    parts = int(np.ceil(n / (BLOCK_ROWS / 4)))
    assignment = MiniBatchKMeans(n_clusters=parts, random_state=seed, n_init=1, batch_size=4096).fit_predict(vectors)
    return [np.flatnonzero(assignment == part) for part in range(parts)]


def near_duplicate_pairs(vectors: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of unit vectors whose cosine distance is at most `threshold`."""
    rows, cols = [], []
    for block in _blocks(vectors, seed):
        block_vectors = vectors[block]
        for start in range(0, len(block), CHUNK_ROWS):
            similarity = block_vectors[start:start + CHUNK_ROWS] @ block_vectors.T
            i, j = np.nonzero(similarity >= 1.0 - threshold)
            i += start
            keep = i < j
            rows.append(block[i[keep]])
            cols.append(block[j[keep]])
    if not rows:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    return np.concatenate(rows), np.concatenate(cols)


def near_duplicate_groups(vectors: np.ndarray, threshold: float, seed: int = 0) -> np.ndarray:
    """For every row, the index of the row its group keeps (the group's first row; itself if unique)."""
    n = len(vectors)
    i, j = near_duplicate_pairs(vectors, threshold, seed)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1 if n else 0, n)
    np.minimum.at(first, component, np.arange(n))
    return first[component]

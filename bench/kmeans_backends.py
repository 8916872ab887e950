"""Which k-means is fastest here: scikit-learn KMeans, MiniBatchKMeans, or faiss (if installed)?

Usage: python bench/kmeans_backends.py [--rows 1000000] [--k 48]

Times one fit of each on the shapes the prepare stage uses: the 32-d PCA space G-means works in,
and full 384-d embeddings. Quality is the inertia relative to scikit-learn KMeans (1.00 = same).
Install faiss with `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans


def inertia(vectors: np.ndarray, centers: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(vectors), 100_000):
        chunk = vectors[start:start + 100_000]
        distances = (chunk**2).sum(1)[:, None] - 2 * chunk @ centers.T + (centers**2).sum(1)[None, :]
        total += float(distances.min(axis=1).sum())
    return total


def fits(vectors: np.ndarray, k: int):
    yield "sklearn KMeans (lloyd, n_init=1)", lambda: KMeans(k, n_init=1, random_state=0).fit(vectors).cluster_centers_
    yield "sklearn MiniBatchKMeans", lambda: MiniBatchKMeans(
        k, n_init=1, random_state=0, batch_size=4096).fit(vectors).cluster_centers_
    try:
        import faiss
    except ImportError:
        print("  faiss: not installed (pip install -e '.[bench]')")
        return

    def faiss_fit():
        model = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=0, max_points_per_centroid=100_000)
        model.train(np.ascontiguousarray(vectors, dtype=np.float32))
        return model.centroids

    yield f"faiss Kmeans {faiss.__version__} (25 iterations)", faiss_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=48)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for dims in (32, 384):
        means = rng.normal(size=(args.k, dims)).astype(np.float32)
        vectors = means[rng.integers(0, args.k, args.rows)] + rng.normal(scale=0.4, size=(args.rows, dims)).astype(
            np.float32)
        print(f"{args.rows:,} x {dims}-d, k={args.k}")
        reference = None
        for name, fit in fits(vectors, args.k):
            started = time.perf_counter()
            centers = fit()
            seconds = time.perf_counter() - started
            value = inertia(vectors, np.asarray(centers, dtype=np.float32))
            reference = reference or value
            print(f"  {name:<40} {seconds:7.1f} s   inertia x{value / reference:.3f}")


if __name__ == "__main__":
    main()

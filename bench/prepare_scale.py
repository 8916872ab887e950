"""How the prepare stage scales: 100k synthetic texts end to end, and 1M x 384-d vectors.

Usage: python bench/prepare_scale.py [--texts 100000] [--vectors 1000000]

Part 1 runs the real `build_splits` (load CSV, chats, exact dedup, TF-IDF, near-dedup, split,
G-means, kmeans sample, representativeness) on generated patient texts. Part 2 starts from clustered
384-d unit vectors (what a sentence encoder gives) and times near-dedup, G-means and sampling.
Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from tunelab.config import TunelabConfig
from tunelab.data.cluster import cluster
from tunelab.data.dedup import find_near_duplicates
from tunelab.data.prepare import build_splits
from tunelab.data.sample import kmeans_sample
from tunelab.demo.symptoms import write_csv


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def texts_end_to_end(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        per_condition = count // 20
        csv = write_csv(Path(folder) / "symptoms.csv", per_condition=per_condition, seed=1)
        config = TunelabConfig(
            data={"source": str(csv), "input_column": "text", "label_column": "label"},
            prepare={"sample": 0.1, "strategy": "kmeans"},
        )
        started = time.perf_counter()
        prepared = build_splits(config)
        wall = time.perf_counter() - started
    counts = prepared.report["counts"]
    print(f"[texts] {counts['rows_read']:,} texts end to end (tfidf): {wall:.1f} s "
          f"(goal <= 60 s: {'met' if wall <= 60 else 'NOT met'}); "
          f"exact dups {prepared.report['exact_duplicates_removed']:,}, "
          f"near dups {prepared.report['near_duplicates_removed']:,}, K={prepared.report['clusters']['k']}, "
          f"sample {counts['train_sample']:,}; peak RSS so far {peak_rss_gib():.2f} GiB")


def clustered_unit_vectors(count: int, dims: int, centers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dims)).astype(np.float32)
    assignment = rng.integers(0, centers, size=count)
    vectors = means[assignment]
    vectors += rng.normal(scale=0.35, size=vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, assignment


def with_near_duplicates(vectors: np.ndarray, truth: np.ndarray, share: float, seed: int):
    """Append slightly perturbed copies of `share` of the rows (cosine distance about 0.005)."""
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(vectors), int(share * len(vectors)), replace=False)
    copies = vectors[sources] + rng.normal(scale=0.005, size=(len(sources), vectors.shape[1])).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([vectors, copies]), np.concatenate([truth, truth[sources]]), len(sources)


def vectors_pipeline(count: int) -> None:
    vectors, truth = clustered_unit_vectors(int(count / 1.01), 384, 48, seed=0)
    vectors, truth, injected = with_near_duplicates(vectors, truth, 0.01, seed=1)
    count = len(vectors)
    labels = [f"label-{c % 12}" for c in truth.tolist()]
    timings = {}
    started = time.perf_counter()
    removed = [row for row, _, _ in find_near_duplicates(vectors, 0.02, seed=0).removed]
    timings["near-dedup"] = time.perf_counter() - started
    kept = np.setdiff1d(np.arange(count), removed)
    vectors, labels = vectors[kept], [labels[i] for i in kept]
    started = time.perf_counter()
    found = cluster(vectors, "auto", alpha=1e-4, min_size=8, k_max=64, pca_dims=32, seed=0)
    timings["G-means + k-means"] = time.perf_counter() - started
    started = time.perf_counter()
    picked = kmeans_sample(labels, found.labels, found.space, len(vectors) // 10, 1, "random", seed=0)
    timings["kmeans sample 10%"] = time.perf_counter() - started
    total = sum(timings.values())
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    print(f"[vectors] {count:,} x 384-d: {parts}; total {total:.1f} s (goal <= 300 s: "
          f"{'met' if total <= 300 else 'NOT met'}); removed {count - len(kept):,} near dups "
          f"({injected:,} injected), K={found.k} "
          f"(48 generated), sample {len(picked):,}; peak RSS {peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    args = parser.parse_args()
    texts_end_to_end(args.texts)
    vectors_pipeline(args.vectors)


if __name__ == "__main__":
    main()

"""Prepare-stage pictures: the clusters in 2-D with the sample highlighted, cluster sizes, labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunelab.evaluate.plots import plt, save_figure

if TYPE_CHECKING:
    from tunelab.data.prepare import Prepared

MAX_POINTS = 20_000


def plot_prepare(prepared: Prepared, folder: Path) -> None:
    plot_clusters(prepared.pool_space, prepared.pool_clusters, prepared.picked, folder / "clusters.png")
    plot_cluster_sizes(prepared.pool_clusters, prepared.picked, folder / "cluster_sizes.png")
    if prepared.pool_labels and prepared.pool_labels[0] is not None:
        plot_labels(prepared.pool_labels, prepared.picked, folder / "labels.png")


def plot_clusters(space: np.ndarray, clusters: np.ndarray, picked: np.ndarray, path: Path) -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    shown = rng.choice(len(space), min(MAX_POINTS, len(space)), replace=False)
    flat = PCA(n_components=2, random_state=0).fit_transform(space) if space.shape[1] > 2 else space
    chosen = np.zeros(len(space), dtype=bool)
    chosen[picked] = True
    figure, axis = plt.subplots(figsize=(6.5, 5))
    axis.scatter(flat[shown, 0], flat[shown, 1], c=clusters[shown], cmap="tab20", s=8, alpha=0.35, linewidths=0)
    if not chosen.all():
        mask = chosen[shown]
        axis.scatter(flat[shown][mask, 0], flat[shown][mask, 1], facecolors="none", edgecolors="black", s=18,
                     linewidths=0.6, label=f"sample ({chosen.sum()} of {len(space)})")
        axis.legend(loc="best", fontsize=8)
    axis.set_title(f"{len(set(clusters.tolist()))} clusters (first 2 principal components)")
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    save_figure(figure, path)


def plot_cluster_sizes(clusters: np.ndarray, picked: np.ndarray, path: Path) -> None:
    k = int(clusters.max()) + 1
    pool = np.bincount(clusters, minlength=k)
    sample = np.bincount(clusters[picked], minlength=k)
    order = np.argsort(-pool)
    figure, axis = plt.subplots(figsize=(max(5, 0.18 * k + 2), 3.5))
    axis.bar(range(k), pool[order], color="#c6dbef", label="pool")
    axis.bar(range(k), sample[order], color="#2171b5", label="sample")
    axis.set_xlabel("cluster (largest first)")
    axis.set_ylabel("rows")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def plot_labels(labels: list, picked: np.ndarray, path: Path) -> None:
    names = sorted(set(labels))
    pool = np.array([labels.count(n) for n in names], dtype=float)
    picked_labels = [labels[i] for i in picked]
    sample = np.array([picked_labels.count(n) for n in names], dtype=float)
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(5, 0.3 * len(names) + 2), 4))
    axis.bar(positions - 0.2, pool / pool.sum(), width=0.4, label="pool")
    axis.bar(positions + 0.2, sample / max(sample.sum(), 1), width=0.4, label="sample")
    axis.set_xticks(positions, names, rotation=90, fontsize=7)
    axis.set_ylabel("share of rows")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)

"""Every picture tunelab draws, for people who would rather look than read: the data (clusters, sizes,
labels), the search (metric against learning rate, grid heatmap, validation curves), training (loss)
and evaluation (confusion, reliability). Callers pass plain numbers; nothing here decides what to plot."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tunelab.rundir import replaced_atomically  # noqa: E402


def save_figure(figure, path: Path) -> None:
    """Write the PNG under a temporary name and rename it, like every run-directory artifact."""
    with replaced_atomically(path) as fd, os.fdopen(fd, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def plot_loss(records: list[dict[str, Any]], path: Path) -> None:
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    validation = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss (answer tokens)")
    if validation:
        axis.plot(*zip(*validation, strict=True), "o-", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


MATRIX_LABELS = 30  # beyond this many labels the matrix shows the most confused ones (readable at 150)


def most_confused(gold: list[str], predicted: list[str | None], count: int) -> list[str]:
    """The `count` labels in the most errors, as the gold label or as the wrong answer."""
    errors: Counter = Counter()
    for truth, answer in zip(gold, predicted, strict=True):
        if truth != answer:
            errors[truth] += 1
            if answer is not None:
                errors[answer] += 1
    return sorted(label for label, _ in errors.most_common(count))


def plot_confusion(gold: list[str], predicted: list[str | None], labels: list[str], path: Path,
                   title: str) -> None:
    """Gold against predicted labels; with more than MATRIX_LABELS labels, only the most confused
    ones, every other answer counted in an "(other)" column."""
    from sklearn.metrics import confusion_matrix

    unknown = "(no label)"
    if len(labels) > MATRIX_LABELS:
        shown = most_confused(gold, predicted, MATRIX_LABELS) or labels[:MATRIX_LABELS]
        title = f"{title}\nthe {len(shown)} most confused of {len(labels)} labels"
        kept = [i for i, truth in enumerate(gold) if truth in shown]
        gold = [gold[i] for i in kept]
        predicted = [predicted[i] if predicted[i] in shown else "(other)" for i in kept]
        labels, unknown = shown, "(other)"
    columns = labels + ([unknown] if any(p is None or p == unknown for p in predicted) else [])
    matrix = confusion_matrix(gold, [p or unknown for p in predicted], labels=columns)[: len(labels)]
    size = max(5.0, 0.35 * len(columns) + 2)
    figure, axis = plt.subplots(figsize=(size, size * len(labels) / len(columns) + 0.8))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            if matrix[row, column]:
                colour = "white" if matrix[row, column] > matrix.max() / 2 else "black"
                axis.text(column, row, str(matrix[row, column]), ha="center", va="center",
                          fontsize=6, color=colour)
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path)


def plot_reliability(curves: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    """Accuracy against confidence per bin for each model: on the diagonal a model knows when it is right."""
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for name, bins in curves.items():
        confidence, accuracy, rows = zip(*bins, strict=True)
        axis.plot(confidence, accuracy, "o-", label=name)
        for x, y, n in bins:
            axis.annotate(str(n), (x, y), fontsize=6, textcoords="offset points", xytext=(3, -8))
    axis.set_xlabel("confidence of the top label")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("reliability (rows per bin annotated)")
    figure.tight_layout()
    save_figure(figure, path)


MAX_POINTS = 20_000


def plot_clusters(space: np.ndarray, clusters: np.ndarray, picked: np.ndarray, path: Path) -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    shown = rng.choice(len(space), min(MAX_POINTS, len(space)), replace=False)
    flat = PCA(n_components=2, random_state=0).fit_transform(space) if space.shape[1] > 2 else space
    if flat.shape[1] < 2:  # a handful of rows can leave a single dimension
        flat = np.column_stack([flat, np.zeros(len(flat))])
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


def plot_metric_vs_lr(rows: list[dict[str, Any]], metric: str, lr_key: str, group_keys: tuple[str, ...],
                      path: Path) -> None:
    """The best value per learning rate, one line per batch setting (the `group_keys` values)."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in group_keys if k in row) or ("all",)].append(row)
    pick = min if metric == "loss" else max
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, members in sorted(groups.items(), key=str):
        best: dict[float, float] = {}
        for row in members:  # best value per learning rate within this batch setting
            best[row[lr_key]] = pick(best.get(row[lr_key], row[metric]), row[metric])
        xs = sorted(best)
        axis.plot(xs, [best[x] for x in xs], "o-", label="b×g = " + "×".join(map(str, key)))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(f"validation {metric}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def plot_heatmap(rows: list[dict[str, Any]], x_key: str, y_key: str, metric: str, path: Path) -> None:
    """The best value for each pair of two searched keys."""
    xs = sorted({r[x_key] for r in rows}, key=str)
    ys = sorted({r[y_key] for r in rows}, key=str)
    cells = defaultdict(list)
    for row in rows:
        cells[(row[y_key], row[x_key])].append(row[metric])
    pick = min if metric == "loss" else max
    matrix = [[pick(cells[(y, x)]) if cells[(y, x)] else float("nan") for x in xs] for y in ys]
    figure, axis = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 2))
    image = axis.imshow(matrix, cmap="viridis_r" if metric == "loss" else "viridis")
    axis.set_xticks(range(len(xs)), [str(x) for x in xs])
    axis.set_yticks(range(len(ys)), [str(y) for y in ys])
    axis.set_xlabel(x_key)
    axis.set_ylabel(y_key)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value == value:
                axis.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image, label=f"validation {metric} (best over other keys)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_validation_curves(curves: list[tuple[str, list[float], list[float], bool]], measure: str,
                           path: Path) -> None:
    """Each trial's intermediate scores against the share of training done: (name, shares, values,
    finished); unfinished (pruned, failed) trials are dotted."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, shares, values, finished in curves:
        axis.plot(shares, values, "-" if finished else ":", marker=".", label=name)
    axis.set_xlabel("share of training done")
    axis.set_ylabel(f"validation {measure} (subset)")
    axis.grid(alpha=0.3)
    if len(curves) <= 16:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, path)

"""Pictures people would rather look at than read: the loss curve, the confusion matrix, reliability."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

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


def plot_confusion(gold: list[str], predicted: list[str | None], labels: list[str], path: Path,
                   title: str) -> None:
    from sklearn.metrics import confusion_matrix

    unknown = "(no label)"
    columns = labels + ([unknown] if any(p is None for p in predicted) else [])
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

"""What a search leaves behind: trials.csv, best.yaml (a config `tunelab train` takes as is), plots."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from tunelab.config import TunelabConfig
from tunelab.errors import TunelabError
from tunelab.evaluate.plots import plt, save_figure
from tunelab.rundir import RunDir, write_text_atomic
from tunelab.search.space import with_values

BATCH_KEYS = ("train.per_device_batch_size", "train.gradient_accumulation_steps")
LR_KEY = "train.learning_rate"


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, ranked: completed trials best first, then pruned, then failed."""
    metric = study.user_attrs.get("metric", "value")
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append({
            "trial": trial.number,
            **trial.params,
            "effective_batch": attrs.get("effective_batch_size"),
            metric: trial.value,
            "training_tokens": attrs.get("training_tokens"),
            "wall_seconds": attrs.get("wall_seconds"),
            "state": trial.state.name,
            "note": attrs.get("fail_reason") or (f"pruned after {attrs['pruned_at_examples']} examples"
                                                 if "pruned_at_examples" in attrs else ""),
        })
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    rows.sort(key=lambda r: (order[r["state"]], -sign * (r[metric] if r[metric] is not None else 0), r["trial"]))
    return rows


def best_config(config: TunelabConfig, study: optuna.Study) -> TunelabConfig:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise TunelabError("no trial completed: nothing to export (see search/trials.csv for the reasons)")
    best = study.best_trial
    winner = with_values(config, best.params)
    winner.search.space = {}
    return winner


def write_results(config: TunelabConfig, study: optuna.Study, run_dir: RunDir) -> dict[str, Any]:
    rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir.search / "trials.csv", buffer.getvalue())
    winner = best_config(config, study)
    header = (f"# Best of {len(rows)} trials by validation {study.user_attrs.get('metric')}: "
              f"trial {study.best_trial.number}, value {study.best_value:.4f}.\n# Train it: tunelab train THIS_FILE\n")
    write_text_atomic(run_dir.search / "best.yaml",
                      header + yaml.safe_dump(winner.model_dump(mode="json"), sort_keys=False))
    plot_search(study, rows, run_dir)
    return {"rows": rows, "best_params": study.best_trial.params, "best_value": study.best_value,
            "metric": study.user_attrs.get("metric")}


def plot_search(study: optuna.Study, rows: list[dict[str, Any]], run_dir: RunDir) -> None:
    metric = study.user_attrs.get("metric", "value")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if done and LR_KEY in done[0]:
        _plot_metric_vs_lr(done, metric, run_dir.search / "metric_vs_lr.png")
    keys = [k for k in study.best_trial.params] if done else []
    if len(keys) >= 2:
        _plot_heatmap(done, keys[0], keys[1], metric, run_dir.search / "grid_heatmap.png")
    _plot_curves(study, run_dir.search / "validation_curves.png")


def _plot_metric_vs_lr(rows, metric, path) -> None:
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in BATCH_KEYS if k in row) or ("all",)].append(row)
    pick = min if metric == "loss" else max
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, members in sorted(groups.items(), key=str):
        best: dict[float, float] = {}
        for row in members:  # best value per learning rate within this batch setting
            best[row[LR_KEY]] = pick(best.get(row[LR_KEY], row[metric]), row[metric])
        xs = sorted(best)
        axis.plot(xs, [best[x] for x in xs], "o-", label="b×g = " + "×".join(map(str, key)))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(f"validation {metric}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def _plot_heatmap(rows, x_key, y_key, metric, path) -> None:
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


def _plot_curves(study: optuna.Study, path) -> None:
    """The intermediate scores of every trial, in the measure they track (sign undone)."""
    tracked = study.user_attrs["intermediate"]  # set by run_search: what was measured, its sign, progress units
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for trial in study.get_trials(deepcopy=False):
        if trial.intermediate_values:
            steps = sorted(trial.intermediate_values)
            style = "-" if trial.state == TrialState.COMPLETE else ":"
            axis.plot([s / tracked["units"] for s in steps],
                      [tracked["sign"] * trial.intermediate_values[s] for s in steps], style, marker=".",
                      label=f"#{trial.number} {trial.state.name.lower()}")
    axis.set_xlabel("share of training done")
    axis.set_ylabel(f"validation {tracked['measure']} (subset)")
    axis.grid(alpha=0.3)
    if len(study.trials) <= 16:
        axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, path)

"""What a search leaves behind: trials.csv, best.yaml (a config `tunelab train` takes as is), plots."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from tunelab.config import TunelabConfig, config_dump
from tunelab.errors import TunelabError
from tunelab.plots import plot_heatmap, plot_metric_vs_lr, plot_validation_curves
from tunelab.rundir import RunDir, exclusive, write_text_atomic
from tunelab.search.space import with_values

BATCH_KEYS = ("train.per_device_batch_size", "train.gradient_accumulation_steps")
LR_KEY = "train.learning_rate"
CHANCE_Z = 1.96  # two-sided 95%: a gap under this many standard errors may be chance


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


def level_with_best(study: optuna.Study) -> list[int]:
    """Finished trials whose validation accuracy cannot be told from the best's on these rows.

    Accuracy on n rows is a binomial share, so two trials differ by chance when their gap is under
    1.96 standard errors of a difference, sqrt((p(1-p) + q(1-q)) / n): on symptom2disease's 167
    validation rows about 4.5 points (7 rows), where recipe searches were won by 1-2 rows.
    """
    best = study.best_trial if study.user_attrs.get("metric") == "accuracy" else None
    rows = best.user_attrs.get("validation_rows") if best else None
    if not rows:
        return []
    level = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        p, q = best.value, trial.value
        if trial.number != best.number and p - q <= CHANCE_Z * math.sqrt((p * (1 - p) + q * (1 - q)) / rows):
            level.append(trial.number)
    return level


def best_config(config: TunelabConfig, study: optuna.Study) -> TunelabConfig:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise TunelabError(f"no trial completed{_first_failure(study)}: nothing to export "
                           "(see search/trials.csv for every trial's reason)")
    best = study.best_trial
    winner = with_values(config, best.params)
    winner.search.space = {}
    return winner


def _first_failure(study: optuna.Study) -> str:
    """Why the first failed trial failed, with its values: often every trial fails for the same reason."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if "fail_reason" in trial.user_attrs:
            values = ", ".join(f"{key}={value}" for key, value in trial.params.items())
            return f"; trial {trial.number} ({values}) failed: {trial.user_attrs['fail_reason']}"
    return ""


def write_results(config: TunelabConfig, study: optuna.Study, run_dir: RunDir) -> dict[str, Any]:
    """Every worker writes the results when its share is done; under the lock, reading the study and
    writing its files go together, so the last worker to finish leaves the final state."""
    with exclusive(run_dir.search / ".results.lock"):
        return _write_results(config, study, run_dir)


def _write_results(config: TunelabConfig, study: optuna.Study, run_dir: RunDir) -> dict[str, Any]:
    rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir.search / "trials.csv", buffer.getvalue())
    winner = best_config(config, study)
    level = level_with_best(study)
    header = (f"# Best of {len(rows)} trials by validation {study.user_attrs.get('metric')}: "
              f"trial {study.best_trial.number}, value {study.best_value:.4f}.\n"
              + (f"# Level with it (the gap could be chance on these validation rows, 95%): trials "
                 f"{', '.join(f'#{n}' for n in level)}.\n" if level else "")
              + "# Train it: tunelab train THIS_FILE\n")
    write_text_atomic(run_dir.search / "best.yaml",
                      header + yaml.safe_dump(config_dump(winner), sort_keys=False))
    plot_search(study, rows, run_dir)
    return {"rows": rows, "best_params": study.best_trial.params, "best_value": study.best_value,
            "metric": study.user_attrs.get("metric"), "level_with_best": level,
            "validation_rows": study.best_trial.user_attrs.get("validation_rows")}


def plot_search(study: optuna.Study, rows: list[dict[str, Any]], run_dir: RunDir) -> None:
    metric = study.user_attrs.get("metric", "value")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if done and LR_KEY in done[0]:
        plot_metric_vs_lr(done, metric, LR_KEY, BATCH_KEYS, run_dir.search / "metric_vs_lr.png")
    keys = [k for k in study.best_trial.params] if done else []
    if len(keys) >= 2:
        plot_heatmap(done, keys[0], keys[1], metric, run_dir.search / "grid_heatmap.png")
    tracked = study.user_attrs["intermediate"]  # set by run_search: what was measured, its sign, progress units
    curves = [(f"#{trial.number} {trial.state.name.lower()}",
               [step / tracked["units"] for step in sorted(trial.intermediate_values)],
               [tracked["sign"] * trial.intermediate_values[step] for step in sorted(trial.intermediate_values)],
               trial.state == TrialState.COMPLETE)
              for trial in study.get_trials(deepcopy=False) if trial.intermediate_values]
    plot_validation_curves(curves, tracked["measure"], run_dir.search / "validation_curves.png")

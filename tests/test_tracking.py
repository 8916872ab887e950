"""Experiment tracking: training and search trials in TensorBoard and MLflow, read back with their own readers."""

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from conftest import make_label_rows, write_config, write_csv
from tunelab.rundir import read_jsonl


def _tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def _mlflow_runs(run_root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(run_root.name)
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}, client


def _tunelab(*args):
    done = subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_training_is_logged_to_tensorboard_and_mlflow(tmp_path, label_csv, tiny_model_dir):
    config = write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir,
                          train={"max_steps": 4, "report_to": ["tensorboard", "mlflow"]},
                          evaluate={"compare_base": False})
    _tunelab("train", config)
    run = tmp_path / "run"
    logged = [r["loss"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
    events = _tensorboard(run / "tensorboard" / "train")
    assert [round(e.value, 4) for e in events.Scalars("train/loss")] == [round(v, 4) for v in logged]
    runs, client = _mlflow_runs(run)
    assert set(runs) == {"train"} and runs["train"].info.status == "FINISHED"
    history = client.get_metric_history(runs["train"].info.run_id, "loss")
    assert [round(m.value, 4) for m in sorted(history, key=lambda m: m.step)] == [round(v, 4) for v in logged]
    assert float(runs["train"].data.params["learning_rate"]) == 5e-3


def test_search_trials_appear_as_runs_with_their_values_and_scores(tmp_path, tiny_model_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    csv_path = write_csv(tmp_path / "d.csv", make_label_rows(per_label=16))
    config = write_config(tmp_path, {"source": str(csv_path), "validation_size": 0.2}, tiny_model_dir,
                          train={"max_steps": 4, "report_to": ["tensorboard", "mlflow"]},
                          search={"space": {"train.learning_rate": [1e-3, 1e-2]}, "metric": "loss"})
    _tunelab("search", config)
    run = tmp_path / "run"
    study = optuna.load_study(study_name="tunelab", storage=f"sqlite:///{run / 'search' / 'study.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    runs, _ = _mlflow_runs(run)
    for trial in trials:
        tracked = runs[f"trial-{trial.number:04d}"]
        assert float(tracked.data.params["train.learning_rate"]) == trial.params["train.learning_rate"]
        assert tracked.data.metrics["validation_loss"] == pytest.approx(trial.value)
        assert "loss" in tracked.data.metrics  # the training curve, from transformers' callback
        events = _tensorboard(run / "tensorboard" / f"trial-{trial.number:04d}")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["train.learning_rate"].number_value == pytest.approx(trial.params["train.learning_rate"])
        assert events.Scalars("validation_loss")[-1].value == pytest.approx(trial.value, rel=1e-6)
        assert events.Scalars("train/loss")


def test_nothing_is_tracked_unless_asked(trained_run):
    assert not (trained_run / "tensorboard").exists() and not (trained_run / "mlflow.db").exists()
    assert not list(trained_run.rglob("mlruns")) and not list(trained_run.rglob("events.out.tfevents*"))

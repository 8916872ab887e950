"""The command line as a user meets it: one-line errors with exit 2, and a full train/evaluate run."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import make_label_rows, write_config, write_csv
from tunelab.cli import app


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_train_then_evaluate_fresh_cases_end_to_end(tmp_path, label_csv, tiny_model_dir):
    """The real console script in a subprocess: split, LoRA training, evaluation, files on disk."""
    config = write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir, train={"max_steps": 6})
    tunelab = [sys.executable, "-m", "tunelab"]
    done = subprocess.run([*tunelab, "train", str(config), "--set", "train.learning_rate=1e-2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test metrics" in done.stdout and "tuned" in done.stdout
    run = tmp_path / "run"
    resolved = (run / "config.yaml").read_text()
    assert "learning_rate: 0.01" in resolved and "target_modules: all-linear" in resolved
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    n_test = len((run / "data" / "test.jsonl").read_text().splitlines())
    assert metrics["n_test"] == n_test >= 6 and {"base", "tuned"} <= set(metrics)
    assert metrics["constrained_to_labels"] is True
    for name in ("base", "tuned"):
        assert {"accuracy", "macro_f1", "per_class_recall", "unknown_label_rate", "loss", "perplexity",
                "free_accuracy", "free_macro_f1", "prefix_accuracy"} <= set(metrics[name])
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    baseline = metrics["baseline"]  # TF-IDF + LR on the run's training split, same test rows
    assert baseline["train_rows"] == len((run / "data" / "train.jsonl").read_text().splitlines())
    assert 0 <= baseline["accuracy"] <= 1 and "loss" not in baseline
    assert "baseline" in metrics["verdict"] and f"{metrics['tuned']['accuracy']:.4f}" in metrics["verdict"]
    assert metrics["verdict"] in " ".join(done.stdout.split())  # printed (wrapped to the terminal)
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == n_test
    assert {"input", "gold", "base_answer", "tuned_answer", "tuned_free_answer", "baseline_answer"} <= set(
        predictions[0])
    assert {p["base_answer"] for p in predictions} <= {"Flu", "Migraine", "Eczema"}  # constrained: labels only
    top = predictions[0]["tuned_top_labels"]  # [label, probability], most probable first
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and sum(p for _, p in top) == pytest.approx(1, 1e-3)
    tuned = metrics["tuned"]
    assert tuned["top1_accuracy"] <= tuned["top3_accuracy"] == 1.0 and 0 <= tuned["expected_calibration_error"] <= 1
    assert (run / "eval" / "reliability.png").stat().st_size > 1000
    assert (run / "eval" / "confusion_tuned.png").stat().st_size > 1000
    assert (run / "model" / "loss.png").is_file()

    metrics_before = (run / "eval" / "metrics.json").read_text()
    fresh = write_csv(tmp_path / "fresh.csv", make_label_rows(per_label=2, seed=7))
    done = subprocess.run([*tunelab, "evaluate", str(run), "--data", str(fresh)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "eval-fresh" / "metrics.json").read_text())["n_test"] == 6
    assert len((run / "eval-fresh" / "predictions.jsonl").read_text().splitlines()) == 6
    assert (run / "eval" / "metrics.json").read_text() == metrics_before  # the held-out split's numbers stay

    done = subprocess.run([*tunelab, "evaluate", str(run), "--decoding", "greedy", "--decoding", "beam"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    comparison = json.loads((run / "eval" / "decoding_comparison.json").read_text())
    assert set(comparison) == {"greedy", "beam"} and "accuracy" in comparison["beam"]
    assert (run / "eval" / "metrics.json").read_text() == metrics_before

    ask = ["generate", str(run), "-p", "I have fever and chills.", "--decoding", "sampling", "--temperature", "0.7",
           "--max-new-tokens", "4"]
    done = subprocess.run([*tunelab, *ask], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    question, answer = done.stdout.splitlines()
    assert question == "I have fever and chills." and answer in {"Flu", "Migraine", "Eczema"}  # a label, always
    done = subprocess.run([*tunelab, *ask, "--free"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("I have fever and chills.\n")
    done = subprocess.run([*tunelab, "generate", str(run)], input="I cough at night.\n\n", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "type a question" in done.stderr

    shutil.rmtree(run / "checkpoints" / "checkpoint-6")  # as if killed between step 4 and step 6
    done = subprocess.run([*tunelab, "train", str(config), "--set", "train.learning_rate=1e-2", "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "model" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6


def test_prepare_command_writes_the_data_stage(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=30))
    config = write_config(tmp_path, {"source": str(csv)}, tiny_model_dir, prepare={"sample": 0.5})
    result = run_cli("prepare", str(config))
    assert result.exit_code == 0, result.output
    assert "K=" in result.output and "label_tv_distance" in result.output
    data = tmp_path / "run" / "data"
    report = json.loads((data / "prepare_report.json").read_text())
    assert report["sizes"]["train"] == len((data / "train.jsonl").read_text().splitlines())
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_demo_data_is_synthetic_labelled_and_reproducible(tmp_path):
    for name in ("a.csv", "b.csv"):
        result = run_cli("demo-data", str(tmp_path / name), "--per-condition", "5")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0] == "text,label" and len(rows) == 1 + 20 * 5

"""The command line as a user meets it: one-line errors with exit 2, and a full train/evaluate run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_label_rows, write_config, write_csv
from tunelab.cli import app


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, expected: str, run_dir: Path):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]
    assert not run_dir.exists(), "a failed command must not leave a run directory"


@pytest.mark.parametrize(
    ("data", "train", "expected"),
    [
        ({"source": "missing.csv"}, {}, "data file not found: missing.csv"),
        ({"source": "{csv}", "label_column": "diagnosis"}, {}, "no column 'diagnosis' (columns: text, label)"),
        ({"source": "{empty}"}, {}, "empty.csv: the dataset is empty"),
        ({"source": "{blank}"}, {}, "blank.csv: row 3: 'label' is empty"),
        ({"source": "{csv}"}, {"method": "dora"}, "'train.method': Input should be 'full', 'lora' or 'qlora'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_dir(tmp_path, tiny_model_dir, data, train, expected):
    rows = make_label_rows(per_label=4)
    files = {
        "csv": write_csv(tmp_path / "data.csv", rows),
        "empty": tmp_path / "empty.csv",
        "blank": write_csv(tmp_path / "blank.csv", rows[:2] + [{"text": "I cough.", "label": " "}] + rows[2:]),
    }
    files["empty"].write_text("text,label\n")
    data = {key: value.format(**files) for key, value in data.items()}
    config = write_config(tmp_path, data, tiny_model_dir, train=train)
    os.chdir(tmp_path)
    assert_one_line_error(run_cli("train", str(config)), expected, tmp_path / "run")


def test_a_path_that_is_no_model(tmp_path, label_csv):
    (tmp_path / "not-a-model").mkdir()
    config = write_config(tmp_path, {"source": str(label_csv)}, tmp_path / "not-a-model")
    assert_one_line_error(run_cli("train", str(config)), "not-a-model: not a model directory (no config.json)",
                          tmp_path / "run")
    config = write_config(tmp_path, {"source": str(label_csv)}, tmp_path / "weights.gguf")
    assert_one_line_error(run_cli("train", str(config)), "model file not found", tmp_path / "run")


def test_missing_config_and_missing_run_dir(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "none.yaml")), "config file not found", tmp_path / "run")
    assert_one_line_error(run_cli("evaluate", str(tmp_path)), "not a tunelab run directory", tmp_path / "run")


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
    for name in ("base", "tuned"):
        assert {"accuracy", "macro_f1", "per_class_recall", "unknown_label_rate", "loss", "perplexity"} <= set(
            metrics[name])
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == n_test and {"input", "gold", "base_answer", "tuned_answer"} <= set(predictions[0])
    assert (run / "eval" / "confusion_tuned.png").stat().st_size > 1000
    assert (run / "model" / "loss.png").is_file()

    fresh = write_csv(tmp_path / "fresh.csv", make_label_rows(per_label=2, seed=7))
    done = subprocess.run([*tunelab, "evaluate", str(run), "--data", str(fresh)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "eval" / "metrics.json").read_text())["n_test"] == 6

    shutil.rmtree(run / "checkpoints" / "checkpoint-6")  # as if killed between step 4 and step 6
    done = subprocess.run([*tunelab, "train", str(config), "--set", "train.learning_rate=1e-2", "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "model" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6


@pytest.mark.parametrize(
    ("rows", "prepare", "expected"),
    [
        ([{"text": "I cough.", "label": "Flu"}] * 5, {}, "only 1 distinct row(s) left after de-duplication"),
        (None, {"sample": 5000}, "prepare.sample=5000 is larger than the"),
        (None, {"k": 500}, "prepare.k=500 is larger than the"),
        ([{"text": " ", "label": "Flu"}] * 3, {}, "every row: 'text' is empty (3 rows)"),
    ],
)
def test_prepare_bad_input_is_one_line_exit_2(tmp_path, tiny_model_dir, rows, prepare, expected):
    csv = write_csv(tmp_path / "d.csv", rows or make_label_rows(per_label=6))
    config = write_config(tmp_path, {"source": str(csv)}, tiny_model_dir, prepare=prepare)
    assert_one_line_error(run_cli("prepare", str(config)), expected, tmp_path / "run")


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

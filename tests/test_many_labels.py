"""150 labels on the tiny model, end to end: the split, training, constrained evaluation, plots and tables
stay right and readable at CLINC150's label count."""

import csv
import json
import subprocess
import sys

from conftest import write_config, write_csv
from tunelab.rundir import read_jsonl

WORDS = ["card", "bill", "flight", "alarm", "balance", "recipe", "weather", "timer", "transfer", "insurance",
         "pin", "travel", "music", "reminder", "calendar"]


def test_a_150_label_run_trains_evaluates_and_reports(tmp_path, tiny_model_dir):
    labels = [f"{WORDS[n % 15]}_{WORDS[n // 15]}" for n in range(150)]
    rows = [{"text": f"request {i} about my {label.replace('_', ' ')} number {i * 31 + n}", "label": label}
            for n, label in enumerate(labels) for i in range(4)]
    config = write_config(tmp_path, {"source": str(write_csv(tmp_path / "intents.csv", rows)), "test_size": 0.25},
                          tiny_model_dir, prepare={"dedup_threshold": None},
                          train={"max_steps": 4, "per_device_batch_size": 16},
                          evaluate={"max_new_tokens": 16, "batch_size": 32})
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    prepared = json.loads((run / "data" / "prepare_report.json").read_text())
    assert prepared["sizes"]["test"] == 150 and len(prepared["labels"]["test"]) == 150  # 0.25 of 600, one each
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n_test"] == 150 and metrics["constrained_to_labels"]
    assert len(metrics["tuned"]["per_class_recall"]) == 150 and "baseline" in metrics
    predictions = read_jsonl(run / "eval" / "predictions.jsonl")
    assert all(p["tuned_answer"] in labels for p in predictions)  # constrained to the 150 labels
    with open(run / "eval" / "per_label.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 150
    recalls = [float(row["tuned_recall"]) for row in table]
    assert recalls == sorted(recalls)  # worst first
    for picture in ("confusion_tuned.png", "confusion_base.png"):
        assert (run / "eval" / picture).stat().st_size > 5000
    subprocess.run([sys.executable, "-m", "tunelab", "report", str(run)], check=True, capture_output=True,
                   timeout=120)
    page = (run / "report.html").read_text()
    assert "Labels by error, worst first (25 worst of 150" in page
    assert len(page) < 3_000_000  # images are inlined; the page stays small at 150 labels

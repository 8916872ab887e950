"""report.html renders in a real headless browser, every section with its images."""

import re
import shutil
import subprocess

import pytest

from conftest import make_label_rows, write_config, write_csv
from tunelab.config import load_config
from tunelab.pipeline import run_pipeline
from tunelab.rundir import RunDir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_renders_every_section_in_headless_chromium(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=16))
    config = load_config(write_config(tmp_path, {"source": str(csv), "validation_size": 0.2}, tiny_model_dir,
                                      prepare={"sample": 0.8},
                                      search={"space": {"train.learning_rate": [1e-3, 1e-2]}, "metric": "loss"}))
    report = run_pipeline(config, RunDir(config.output_dir))["report"]
    assert not re.search(r'(src|href)="(https?:|//)', report.read_text())  # self-contained: nothing to fetch
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-rendered="yes"' in dom
    rendered = dict(re.findall(r'<section id="(\w+)" data-images-ok="(\d+/\d+)"', dom))
    assert set(rendered) == {"prepare", "search", "training", "evaluation"}
    for section, images in rendered.items():
        ok, total = images.split("/")
        assert ok == total and int(total) >= 1, f"{section}: {images} images decoded"
    for heading in ("Data preparation", "Hyperparameter search", "Training", "Evaluation on the test split",
                    "Example predictions"):
        assert heading in dom
    evaluation = dom.split('<section id="evaluation"')[1]
    assert "<th>baseline</th>" in evaluation and "logistic regression baseline" in evaluation


def test_a_150_label_confusion_matrix_shows_the_most_confused_labels_at_a_readable_size(tmp_path):
    from PIL import Image

    from tunelab.plots import MATRIX_LABELS, most_confused, plot_confusion

    labels = [f"intent_{i:03d}" for i in range(150)]
    gold = [label for label in labels for _ in range(4)]
    predicted = [label if i % 4 else labels[(labels.index(label) + 1) % 150] for i, label in enumerate(gold)]
    predicted[:8] = ["intent_149"] * 8  # one label collects many wrong answers
    plot_confusion(gold, predicted, labels, tmp_path / "confusion.png", "tuned model")
    width, height = Image.open(tmp_path / "confusion.png").size
    assert width < 2000 and height < 2000  # 150 labels at 0.35 inch each would be over 5,000 pixels
    shown = most_confused(gold, predicted, MATRIX_LABELS)
    assert len(shown) == MATRIX_LABELS and "intent_149" in shown

"""Training killed with SIGKILL at many points, then resumed, ends where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_label_rows, write_config, write_csv
from tunelab.config import load_config
from tunelab.evaluate.generation import answer_loss
from tunelab.model.adapters import load_tuned
from tunelab.rundir import RunDir, read_jsonl

# Runs the real CLI with each checkpoint's flush slowed down, so a kill can land inside a save.
DRIVER = """
import sys, time
import tunelab.train.checkpoints as checkpoints
flush = checkpoints._fsync_tree
def slow_flush(folder):
    time.sleep(0.4)
    flush(folder)
checkpoints._fsync_tree = slow_flush
from tunelab.cli import app
sys.argv[0] = "tunelab"
app()
"""


def logged_step(run: Path) -> int:
    path = run / "train_log.jsonl"
    return max((r["step"] for r in read_jsonl(path)), default=0) if path.exists() else 0


KILL_POINTS = {
    "after the first step, before any checkpoint": lambda run: logged_step(run) >= 1,
    "inside a checkpoint save": lambda run: any((run / "checkpoints" / ".staging").glob("checkpoint-[468]")),
    "right after checkpoint 4": lambda run: (run / "checkpoints" / "checkpoint-4").is_dir(),
    "between checkpoints, after step 5": lambda run: logged_step(run) >= 5,
    "after the last checkpoint, before the final save": lambda run: (run / "checkpoints" / "checkpoint-8").is_dir(),
}


def train(config: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, "train", str(config), "-o", str(run), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors[-3000:]
    return errors


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("crash")
    csv = write_csv(folder / "d.csv", make_label_rows(per_label=16))
    config = write_config(folder, {"source": str(csv)}, tiny_model_dir,
                          train={"max_steps": 8, "save_steps": 2, "logging_steps": 1, "learning_rate": 1e-2,
                                 "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "evaluate_after": False})
    reference = folder / "reference"
    finish(train(config, reference))
    return config, reference


def test_reference_run_keeps_only_complete_checkpoints(setup):
    _, reference = setup
    checkpoints = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-6", "checkpoint-8"]
    assert all((reference / "checkpoints" / name / "COMPLETE").is_file() for name in checkpoints)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_and_resumed_run_matches_the_uninterrupted_one(setup, tmp_path, point):
    config, reference = setup
    run = tmp_path / "run"
    process = train(config, run)
    deadline = time.monotonic() + 120
    while not KILL_POINTS[point](run):
        assert process.poll() is None, f"training ended before the kill point '{point}'"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    errors = finish(train(config, run, "--resume"))
    if point != "after the first step, before any checkpoint":
        assert "resuming from checkpoint-" in errors
    if point == "inside a checkpoint save":
        assert "ignoring checkpoint-" in errors and "stopped while saving" in errors
    logged_steps = [r["step"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
    assert logged_steps == sorted(set(logged_steps)), "a resumed run logs each step once"
    resumed = load_file(run / "model" / "adapter_model.safetensors")
    for key, tensor in load_file(reference / "model" / "adapter_model.safetensors").items():
        torch.testing.assert_close(resumed[key], tensor, atol=1e-6, rtol=1e-5)
    losses = []
    for folder in (run, reference):
        loaded = load_config(folder / "config.yaml")
        tuned, tokenizer, _ = load_tuned(loaded, RunDir(folder))
        losses.append(answer_loss(tuned.eval(), tokenizer, read_jsonl(RunDir(folder).split("test")), 128, 8)["loss"])
    assert abs(losses[0] - losses[1]) <= 1e-5

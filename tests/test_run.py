"""`tunelab run`: every stage in one directory, skipped when done, resumed when interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import make_label_rows, write_config, write_csv

TUNELAB = [sys.executable, "-m", "tunelab"]


def run(config, run_dir, *extra, check=True):
    done = subprocess.run([*TUNELAB, "run", str(config), "-o", str(run_dir), *extra],
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def stages(run_dir):
    return json.loads((run_dir / "stages.json").read_text())


def test_second_run_skips_every_stage_and_a_change_reruns_what_follows(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=16))
    config = write_config(tmp_path, {"source": str(csv), "validation_size": 0.2}, tiny_model_dir,
                          search={"space": {"train.learning_rate": [1e-3, 1e-2]}, "metric": "loss"})
    first = run(config, tmp_path / "run")
    assert {s["status"] for s in stages(tmp_path / "run").values()} == {"complete"}
    assert "test metrics" in first.stdout and "search: best loss" in first.stderr
    assert "dry run: nothing uploaded" in first.stderr
    published = {p.name for p in (tmp_path / "run" / "publish").iterdir()}
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "metrics.json", "loss.png"} <= published
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in published)
    card = (tmp_path / "run" / "publish" / "README.md").read_text()
    tuned = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["tuned"]
    assert "| loss | " in card and f"{tuned['loss']:.4f}" in card and "trials scored on the validation split" in card
    weights = tmp_path / "run" / "model" / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    outputs = {path: path.stat().st_mtime_ns for path in (tmp_path / "run").rglob("*")
               if path.is_file() and path.name != "report.html"}  # the report page is drawn on every run
    assert not list((tmp_path / "run").rglob(".*")), "no lock or staging folder outlives the command"
    modes = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777)
             for path in [tmp_path / "run", *(tmp_path / "run").rglob("*")]}
    expected = {name: oct(0o755) if (tmp_path / name).is_dir() else oct(0o644) for name in modes}
    assert modes == expected  # what a normal write gives under umask 022, atomic writes included

    second = run(config, tmp_path / "run")
    assert "skipped (done before with the same inputs): prepare, search, train, evaluate, publish" in second.stderr
    assert {path: path.stat().st_mtime_ns for path in outputs} == outputs  # no stage wrote again

    third = run(config, tmp_path / "run", "--set", "evaluate.compare_base=false")
    assert "skipped (done before with the same inputs): prepare, search, train" in third.stderr
    assert weights.stat().st_mtime_ns == written
    assert "base" not in json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())

    run(config, tmp_path / "run", "--from", "train")
    assert weights.stat().st_mtime_ns != written


def test_run_killed_during_training_continues_from_its_checkpoint(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=16))
    config = write_config(tmp_path, {"source": str(csv)}, tiny_model_dir,
                          train={"max_steps": 12, "save_steps": 3, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}})
    run(config, tmp_path / "reference")

    process = subprocess.Popen([*TUNELAB, "run", str(config), "-o", str(tmp_path / "run")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-6"
    deadline = time.monotonic() + 120
    while not checkpoint.is_dir():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert stages(tmp_path / "run")["train"]["status"] == "running"

    resumed = run(config, tmp_path / "run")
    assert "train: continuing where the last run stopped" in resumed.stderr
    assert "resuming from checkpoint-" in resumed.stderr
    for folder in ("model", "eval"):
        assert sorted(p.name for p in (tmp_path / "run" / folder).iterdir()) == sorted(
            p.name for p in (tmp_path / "reference" / folder).iterdir())
    assert not list((tmp_path / "run").rglob(".*")), "the killed run's lock and staging folders are gone"
    resumed_weights = load_file(tmp_path / "run" / "model" / "adapter_model.safetensors")
    for key, tensor in load_file(tmp_path / "reference" / "model" / "adapter_model.safetensors").items():
        torch.testing.assert_close(resumed_weights[key], tensor, atol=1e-6, rtol=1e-5)
    reference_metrics = json.loads((tmp_path / "reference" / "eval" / "metrics.json").read_text())
    resumed_metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert abs(resumed_metrics["tuned"]["loss"] - reference_metrics["tuned"]["loss"]) <= 1e-5


def test_what_a_killed_stage_leaves_is_cleared_by_the_next_run(tmp_path, tiny_model_dir):
    """A process killed mid-write leaves its lock file and its staging folders (.NAME.PID.*); the next
    run clears those of dead processes and keeps those of live ones (another worker writing)."""
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=8))
    config = write_config(tmp_path, {"source": str(csv)}, tiny_model_dir)
    root = tmp_path / "run"
    run(config, root)
    dead = subprocess.Popen(["true"])  # a process id that no longer runs
    dead.wait()
    stale = [root / f".{name}.{dead.pid}.abc123" for name in ("data", "model", "eval", "publish")]
    for folder in stale:
        folder.mkdir()
        (folder / "half-written.json").write_text("{")
    (root / ".prepare.lock").touch()
    live = root / f".eval.{os.getpid()}.live"
    live.mkdir()

    run(config, root, "--from", "prepare")
    assert not [folder for folder in stale if folder.exists()] and not (root / ".prepare.lock").exists()
    assert live.is_dir()

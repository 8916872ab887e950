"""bench/gpu_check.py: its CPU form runs the same code as on a GPU, every row really trains."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from gpu_check import DEEPSEEK_R1_DISTILL_QWEN_1_5B, ROWS  # noqa: E402


def test_cpu_form_trains_every_row_side_by_side(tmp_path):
    results_file = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--small",
                           "--json", str(results_file)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(results_file.read_text())
    rows = {row["row"]: row for row in results["rows"]}
    assert list(rows) == list(ROWS)
    for name, row in rows.items():
        assert "skipped" not in row, (name, row)  # every package is installed here: a skip is a failure
        assert row["timed_tokens"] > 0 and row["tokens_per_s"] > 0, name
        assert math.isfinite(row["last_loss"]) and 0 < row["last_loss"] < 10, name
    for name in ROWS:
        assert f"| {name} | " in done.stdout  # the printed table


def test_the_model_has_the_published_shape_of_deepseek_r1_distill_qwen_1_5b():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):  # no memory: only the parameter shapes
        model = Qwen2ForCausalLM(Qwen2Config(**DEEPSEEK_R1_DISTILL_QWEN_1_5B))
    assert sum(p.numel() for p in model.parameters()) == 1_777_088_000


def test_help_says_what_to_bring_to_an_offline_gpu_machine():
    shown = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    for needed in ("pip download", "pip install --no-index", "pydantic==", "trl==", "bitsandbytes==", "--device cpu"):
        assert needed in shown, needed

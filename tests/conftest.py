"""Shared fixtures: a tiny random Qwen2 with a locally trained tokenizer, and small datasets.

The tiny model goes through the normal `save_pretrained` / `from_pretrained` path, so the code under
test loads it exactly like a real model directory.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "symptom2disease.csv"

CONDITIONS = {
    "Flu": ["fever", "chills", "body aches", "a sore throat", "a dry cough"],
    "Migraine": ["a throbbing headache", "nausea", "light sensitivity", "blurred vision", "dizziness"],
    "Eczema": ["itchy skin", "red patches", "dry skin", "cracked skin", "a rash on my elbows"],
}


def make_label_rows(per_label: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """Short symptom descriptions with a diagnosis label, distinct texts, fixed seed."""
    rng = random.Random(seed)
    rows = []
    for label, symptoms in CONDITIONS.items():
        seen: set[str] = set()
        while len(seen) < per_label:
            picked = rng.sample(symptoms, 3)
            text = f"I have had {picked[0]}, {picked[1]} and {picked[2]} for {rng.randint(2, 9)} days."
            if text not in seen:
                seen.add(text)
                rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_tiny_model(folder: Path) -> Path:
    from tunelab.demo.random_model import local_tokenizer, save_random_qwen2

    corpus = [row["text"] + " " + row["label"] for row in make_label_rows(40, seed=1)]
    corpus += ["system user assistant You are a helpful assistant. Name the diagnosis."] * 5
    return save_random_qwen2(
        folder, local_tokenizer(corpus, vocab_size=600), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.2,  # large enough that LoRA alone can make the tied LM head confident
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def label_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "symptoms.csv", make_label_rows())


def write_config(folder: Path, data: dict, model_dir: Path, **sections) -> Path:
    """A YAML config for the tiny model, with fast training settings unless overridden."""
    import yaml

    config = {
        "data": {"input_column": "text", "label_column": "label", "system_prompt": "Name the diagnosis.", **data},
        "model": {"name_or_path": str(model_dir)},
        "train": {"method": "lora", "learning_rate": 5e-3, "per_device_batch_size": 8, "max_steps": 4,
                  "logging_steps": 1, "save_steps": 2, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                  "num_threads": 1},
        "evaluate": {"max_new_tokens": 8, "batch_size": 16},
        "output_dir": str(folder / "run"),
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A run trained and evaluated by `tunelab train` on the tiny model: what publish and export read."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("trained")
    csv_path = write_csv(folder / "symptoms.csv", make_label_rows(per_label=8))
    config = write_config(folder, {"source": str(csv_path)}, tiny_model_dir, train={"max_steps": 4},
                          publish={"verify_prompts": 2, "disclaimer": "Not a medical device and not medical advice."})
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (the packaged GGUF, offline) tuned for 12 steps on 3 labels and evaluated: a
    real tokenizer that llama.cpp's converter knows, confident answers that survive f16 rounding."""
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("smollm2")
    csv_path = write_csv(folder / "symptoms.csv", make_label_rows(per_label=12))
    config = write_config(folder, {"source": str(csv_path)}, "smollm2-135m-instruct",
                          train={"max_steps": 12, "learning_rate": 1e-3, "save_steps": 100},
                          evaluate={"compare_base": False}, publish={"verify_prompts": 4})
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run"


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_run):
    """smollm2_run after `tunelab export -f gguf -q q8_0`: (the run directory, the command's result)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tunelab", "export", str(smollm2_run), "--format", "gguf",
                           "--quant", "q8_0"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return smollm2_run, done

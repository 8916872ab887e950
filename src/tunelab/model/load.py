"""Load the base model and tokenizer in the configured dtype and attention implementation."""

from __future__ import annotations

import importlib.util
import logging

import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.model.source import ModelSource

log = logging.getLogger(__name__)


def pick_dtype(config: ModelConfig, trains_all_weights: bool = False) -> torch.dtype:
    """The dtype the weights are stored in. auto: bfloat16 on a GPU that has it, for inference and for
    the frozen base under LoRA/QLoRA; float32 when every weight trains (full fine-tuning), so AdamW
    updates fp32 master weights while bf16 autocast does the matmuls: a bf16 weight would round
    away any update smaller than 1/256 of itself."""
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and not trains_all_weights:
        return torch.bfloat16
    return torch.float32


def check_full_training_dtype(config: ModelConfig) -> None:
    """Full fine-tuning in half-precision weights: fp16 cannot train (the gradient scaler refuses fp16
    weights); bf16 runs, as the user asked, but loses small updates, so it is said once."""
    if config.dtype == "float16":
        raise TunelabError("train.method=full with model.dtype=float16: fp16 weights cannot be trained (no fp32 "
                           "master copy for the gradient scaler); use model.dtype auto (fp32 weights, fp16/bf16 "
                           "autocast) or bfloat16")
    if config.dtype == "bfloat16":
        log.warning("train.method=full with model.dtype=bfloat16: AdamW updates bf16 weights without an fp32 master "
                    "copy, so updates below ~1/256 of a weight are lost; model.dtype auto keeps fp32 weights under "
                    "bf16 autocast (twice the weight memory)")


def _attn_implementation(config: ModelConfig) -> str | None:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def from_pretrained(loader, source: ModelSource, **kwargs):
    """`loader.from_pretrained` with a missing/unreachable model turned into one line."""
    try:
        return loader.from_pretrained(source.path, revision=source.revision, **kwargs)
    except OSError as exc:
        raise TunelabError(f"cannot load model '{source.path}': {str(exc).splitlines()[0]}") from None


def load_tokenizer(source: ModelSource, config: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, source, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise TunelabError(f"{source.path}: the tokenizer has no chat template (use an instruct/chat model)")
    return tokenizer


def load_model(source: ModelSource, config: ModelConfig, quantize_4bit: bool = False,
               trains_all_weights: bool = False):
    """The causal LM in the configured dtype (see `pick_dtype`); with `quantize_4bit`, a frozen NF4 base
    for QLoRA whose matmuls compute in that dtype (bf16 on a GPU)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = pick_dtype(config, trains_all_weights)
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
    model = from_pretrained(AutoModelForCausalLM, source, **kwargs)
    if torch.cuda.is_available() and not quantize_4bit:
        model.to("cuda")
    return model

"""The tuned weights on top of the base: attach LoRA for training, load a trained run, merge.

A LoRA run's base model is the tuned one with its adapter switched off, so evaluation holds one
copy of the weights; a full fine-tune loads the base separately when it is asked for.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from tunelab.config import ModelConfig, TrainConfig, TunelabConfig
from tunelab.errors import TunelabError
from tunelab.model.load import from_pretrained, load_model, load_tokenizer
from tunelab.model.source import ModelSource, materialize
from tunelab.rundir import RunDir


def attach_adapters(model, train: TrainConfig):
    """Apply the training method: LoRA adapters on a (possibly 4-bit) frozen base, or nothing."""
    if train.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if train.method == "qlora":
        # Norms and embeddings to fp32 for stable training over the NF4 weights; non-reentrant
        # checkpointing as for the other methods.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.alpha,
        lora_dropout=train.lora.dropout,
        target_modules=train.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    # PEFT keeps the adapters in fp32 over a bf16/fp16 base (autocast_adapter_dtype, its default).
    return get_peft_model(model, lora, autocast_adapter_dtype=True)


def check_adapter_targets(config: TunelabConfig) -> None:
    """LoRA's target_modules (the config's, and each one a search may try) name layers of this
    architecture: checked with PEFT's own matching on an empty (meta-device) copy of the model before
    any stage runs, not after the data was prepared."""
    space = config.search.space or {}
    searched = space.get("train.lora.target_modules")
    trains_adapters = config.train.method != "full" or "train.method" in space
    targets = [*(searched if isinstance(searched, list) else []),
               *([config.train.lora.target_modules] if trains_adapters else [])]
    targets = [target for target in targets if target != "all-linear"]
    if not targets:
        return
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = config.model.trust_remote_code
    architecture = from_pretrained(AutoConfig, materialize(config.model), trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture, trust_remote_code=trust)
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        lora = LoraConfig(target_modules=target, task_type="CAUSAL_LM")
        if not any(check_target_module_exists(lora, name) for name in names):
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            raise TunelabError(f"train.lora.target_modules: {target} match no layer of {type(model).__name__}; "
                               f"its linear layers: {', '.join(linear)} (or all-linear)")


def parameter_count(parameter: torch.nn.Parameter) -> int:
    """Weights a parameter stands for: a 4-bit bitsandbytes tensor packs two per stored byte, and its
    quantization state keeps the original shape."""
    quant_state = getattr(parameter, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else parameter.numel()


def count_parameters(model) -> dict[str, int]:
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_count(p) for p in model.parameters())
    return {"trainable": trainable, "total": total}


def load_adapter(model_config: ModelConfig, adapter_dir: Path, quantize_4bit: bool = False):
    """A saved LoRA adapter on a freshly loaded base (4-bit for QLoRA runs)."""
    from peft import PeftModel

    base = load_model(materialize(model_config), model_config, quantize_4bit=quantize_4bit)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def merged_model(model_config: ModelConfig, adapter_dir: Path):
    """LoRA folded into a full-precision copy of the base (never into a 4-bit one), in fp32."""
    fp32 = model_config.model_copy(update={"dtype": "float32"})
    return load_adapter(fp32, adapter_dir).merge_and_unload().to(torch.float32)


def load_tuned(config: TunelabConfig, run_dir: RunDir):
    """The fine-tuned model from model/, its tokenizer, and a context manager giving the base model."""
    if not (run_dir.model / "config.json").is_file() and not (run_dir.model / "adapter_config.json").is_file():
        raise TunelabError(f"{run_dir.root}: no trained model in model/ (run `tunelab train` first)")
    source = materialize(config.model)
    tokenizer = load_tokenizer(source, config.model)
    if config.train.method == "full":
        tuned = load_model(ModelSource(str(run_dir.model)), config.model)
        return tuned, tokenizer, partial(_base_from_source, config.model, source)
    tuned = load_adapter(config.model, run_dir.model, quantize_4bit=config.train.method == "qlora")
    return tuned, tokenizer, partial(_adapter_off, tuned)


@contextmanager
def _adapter_off(model):
    with model.disable_adapter():
        yield model


@contextmanager
def _base_from_source(model_config: ModelConfig, source: ModelSource):
    model = load_model(source, model_config)
    model.eval()
    yield model

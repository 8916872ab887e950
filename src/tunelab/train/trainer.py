"""The train stage: full fine-tuning, LoRA or QLoRA with transformers' Trainer and PEFT.

Our part is the decisions (which weights train, how prompts are masked, what is logged and kept);
the loop, optimizer, scheduler, checkpointing and progress bar are transformers'.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, TrainerState

from tunelab.config import TrainConfig, TunelabConfig
from tunelab.data.chat import encode_example
from tunelab.errors import TunelabError
from tunelab.model.adapters import attach_adapters, count_parameters
from tunelab.model.batching import IGNORE_INDEX, BatchCollator, answer_only_loss, model_inputs, packs_into_one_row
from tunelab.model.load import check_full_training_dtype, load_model, load_tokenizer, pick_dtype
from tunelab.model.source import ModelSource, materialize
from tunelab.rundir import RunDir, read_jsonl, staged_directory, write_json, write_jsonl
from tunelab.train.callbacks import JsonlLogCallback, LossWatchdog, TrainingProgress
from tunelab.train.checkpoints import AtomicCheckpointTrainer, finished_checkpoint, latest_complete_checkpoint

log = logging.getLogger(__name__)


def encode_split(tokenizer, examples: list[dict[str, Any]], max_length: int):
    """Rows of input_ids / attention_mask / labels (a list is all the Trainer needs), plus how many rows
    `max_length` cut: {"prompt_cut_rows": …, "answer_cut_rows": …}."""
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in encoded]
    cuts = {"prompt_cut_rows": sum(e.prompt_cut > 0 for e in encoded),
            "answer_cut_rows": sum(e.answer_cut > 0 for e in encoded)}
    return rows, cuts


def store_frozen_linears_in_bf16(model) -> None:
    """Under bf16 autocast every matmul rounds its fp32 weight to bf16 anyway, and a frozen weight's
    rounded copy is made again at each step and kept for the backward pass. Storing the frozen
    linear weights in bf16 gives the same products with half the weight memory and no copies.
    Weights shared with the input embeddings stay fp32 (the lookup is not autocast); they and the
    other fp32 tensors are copied so the memory-mapped checkpoint file is released (its pages would
    otherwise stay resident: ~4 bytes per parameter)."""
    embeddings = model.get_input_embeddings().weight
    converted = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
            for parameter in (module.weight, module.bias):
                if parameter is not None and parameter.dtype == torch.float32:
                    parameter.data = parameter.data.to(torch.bfloat16)
                    converted.add(id(parameter))
    if not converted:  # already loaded in bf16 (GPU): nothing was mapped in fp32
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in converted:
            tensor.data = tensor.data.clone()


def upcast_frozen_linears(model) -> None:
    """Back to fp32 storage after training, so the returned model runs without autocast. The values
    stay bf16-rounded: under bf16 autocast it computes exactly what the saved adapter on the fp32
    base computes (every matmul rounds the weights the same way)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.weight.data = module.weight.data.float()
            if module.bias is not None:
                module.bias.data = module.bias.data.float()


def weights_dtype(config: TunelabConfig) -> torch.dtype:
    """The dtype training loads the model in: fp32 master weights when every weight trains."""
    return pick_dtype(config.model, trains_all_weights=config.train.method == "full")


def build_model(config: TunelabConfig, source: ModelSource):
    """The model to train, with the precision each method needs: full fine-tuning on fp32 weights
    (bf16 autocast computes), LoRA's fp32 adapters over a bf16-stored frozen base, QLoRA's adapters
    over an NF4 base computing in the load dtype. Gradient checkpointing is the non-reentrant kind,
    which works with frozen inputs and PEFT without extra hooks."""
    train = config.train
    if train.method == "full":
        check_full_training_dtype(config.model)
    model = load_model(source, config.model, quantize_4bit=train.method == "qlora",
                       trains_all_weights=train.method == "full")
    if train.method == "lora" and mixed_precision(train, weights_dtype(config)) == "bf16":
        store_frozen_linears_in_bf16(model)
    if train.gradient_checkpointing and train.method != "qlora":  # QLoRA: prepare_model_for_kbit_training does it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return attach_adapters(model, train)


def check_optimizer(train: TrainConfig) -> None:
    """bitsandbytes' 8-bit and paged optimizers keep their state on a CUDA device."""
    if "8bit" in train.optimizer or "paged" in train.optimizer:
        if not torch.cuda.is_available():
            raise TunelabError(f"train.optimizer={train.optimizer} needs a CUDA GPU (bitsandbytes keeps its state "
                               "there); use auto or adamw_torch on this machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TunelabError(f"train.optimizer={train.optimizer} needs bitsandbytes: pip install bitsandbytes")


def mixed_precision(train: TrainConfig, dtype: torch.dtype) -> str:
    """The autocast precision: what the config asks, or (auto) the fastest one this hardware does well."""
    if train.mixed_precision != "auto":
        return train.mixed_precision
    if torch.cuda.is_available():
        if dtype == torch.float16 or not torch.cuda.is_bf16_supported():
            return "fp16"
        return "bf16"
    return "bf16" if dtype == torch.float32 and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def _training_arguments(config: TunelabConfig, output_dir: Path, has_validation: bool, quiet: bool):
    from transformers import TrainingArguments

    train = config.train
    on_gpu = torch.cuda.is_available()
    precision = mixed_precision(train, weights_dtype(config))
    optimizer = {} if train.optimizer == "auto" else {"optim": train.optimizer}
    return TrainingArguments(
        **optimizer,
        output_dir=str(output_dir),
        per_device_train_batch_size=train.per_device_batch_size,
        per_device_eval_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type=train.scheduler,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        neftune_noise_alpha=train.neftune_alpha,
        label_smoothing_factor=train.label_smoothing,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the watchdog must see a NaN loss, not a smoothed-over one
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy="epoch" if has_validation else "no",
        disable_tqdm=True,  # TrainingProgress shows the one display
        train_sampling_strategy="group_by_length" if train.group_by_length and not train.pack_row_tokens else "random",
        seed=config.seed,
        data_seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not on_gpu,
        use_liger_kernel=on_gpu and train.liger_kernels and importlib.util.find_spec("liger_kernel") is not None,
        # The fused LM head + loss of Liger would replace our answer-only one.
        liger_kernel_config={"fused_linear_cross_entropy": False},
        dataloader_pin_memory=on_gpu,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
    )


class TunelabTrainer(AtomicCheckpointTrainer):
    """The training loss with the answer-only LM head; packed batches attend by position_ids."""

    answer_only_lm_head = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.answer_only_lm_head:  # evaluation wants the full logits too
            return super().compute_loss(model, model_inputs(inputs), return_outputs, num_items_in_batch)
        loss = answer_only_loss(model, inputs, num_items_in_batch, self.args.label_smoothing_factor)
        # As Trainer.compute_loss: the count covers every process, and DDP averages the gradients.
        counted_everywhere = self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
        if num_items_in_batch is not None and counted_everywhere:
            loss = loss * self.accelerator.num_processes
        return loss


@dataclass
class TrainingOutcome:
    summary: dict[str, Any]
    model: Any
    tokenizer: Any


def run_training(config: TunelabConfig, run_dir: RunDir, resume: bool = False,
                 callbacks: tuple = (), quiet: bool = False) -> TrainingOutcome:
    """Train on data/train.jsonl and write model/ (weights, tokenizer, summary, loss curve).

    `quiet` (search trials): no progress bar, no printed logs, no Trainer evaluation; the log file
    and the callbacks still see every record.
    """
    from transformers import set_seed

    train = config.train
    check_optimizer(train)
    torch.set_num_threads(train.num_threads or os.cpu_count() or 1)
    set_seed(config.seed)
    source = materialize(config.model)
    tokenizer = load_tokenizer(source, config.model)
    train_set, cuts = encode_split(tokenizer, read_jsonl(run_dir.split("train")), train.max_length)
    if train.per_device_batch_size > len(train_set):  # a bigger batch only allocates memory for nothing
        log.log(logging.DEBUG if quiet else logging.WARNING, "train.per_device_batch_size=%d is more than the %d "
                "training rows: batches of %d", train.per_device_batch_size, len(train_set), len(train_set))
        train = train.model_copy(update={"per_device_batch_size": len(train_set)})
        config = config.model_copy(update={"train": train})
    validation_rows = read_jsonl(run_dir.split("validation")) if train.validation_loss_each_epoch and not quiet else []
    validation_set = encode_split(tokenizer, validation_rows, train.max_length)[0] if validation_rows else None
    model = build_model(config, source)
    parameters = count_parameters(model)
    effective_batch = train.per_device_batch_size * train.gradient_accumulation_steps * _world_size()
    if (cuts["prompt_cut_rows"] or cuts["answer_cut_rows"]) and not quiet:
        log.warning("of %d training rows longer than train.max_length=%d tokens, %d lost the start of their user "
                    "text (system prompt and template kept) and %d the end of their answer (end-of-turn kept)",
                    len(train_set), train.max_length, cuts["prompt_cut_rows"], cuts["answer_cut_rows"])
    log.log(
        logging.DEBUG if quiet else logging.INFO,
        "method=%s trainable=%s/%s effective batch B=%d (b=%d x g=%d x processes=%d)",
        train.method, f"{parameters['trainable']:,}", f"{parameters['total']:,}", effective_batch,
        train.per_device_batch_size, train.gradient_accumulation_steps, _world_size(),
    )
    run_dir.root.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.root / "train_log.jsonl"
    if not resume:  # a fresh run must not pick up or rotate checkpoints of an earlier one
        log_path.unlink(missing_ok=True)
        shutil.rmtree(run_dir.checkpoints, ignore_errors=True)
    trainer = TunelabTrainer(
        model=model,
        args=_training_arguments(config, run_dir.checkpoints, validation_set is not None, quiet),
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=BatchCollator(tokenizer.pad_token_id, train.pack_row_tokens,
                                    one_row=packs_into_one_row(getattr(model.config, "_attn_implementation", None))),
        callbacks=[JsonlLogCallback(log_path), LossWatchdog(train.learning_rate), *callbacks],
    )
    trainer.answer_only_lm_head = train.answer_only_lm_head
    trainer.remove_callback(PrinterCallback)  # raw metric dicts: train_log.jsonl and the display hold them
    display = TrainingProgress()
    if not quiet:
        trainer.add_callback(display)
    started = time.perf_counter()
    resume_from = latest_complete_checkpoint(run_dir.checkpoints) if resume else None
    if resume_from:
        log.info("resuming from %s", resume_from.name)
    if resume:
        _forget_logs_after(log_path, int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0)
    if resume_from and finished_checkpoint(resume_from):
        # transformers would run one step past max_steps when resuming from the last checkpoint.
        trainer._load_from_checkpoint(str(resume_from))
        trainer.state = TrainerState.load_from_json(str(resume_from / TRAINER_STATE_NAME))
        steps, training_loss = trainer.state.global_step, _mean_logged_loss(trainer.state.log_history)
    else:
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            display.stop()  # so an error starts on a line of its own
        steps, training_loss = result.global_step, result.training_loss
    wall = time.perf_counter() - started
    supervised_per_epoch = sum(sum(1 for t in row["labels"] if t != IGNORE_INDEX) for row in train_set)
    summary = {
        "method": train.method,
        "parameters": parameters,
        "effective_batch_size": effective_batch,
        "steps": steps,
        "train_loss_mean": training_loss,  # over every logged step of the run
        "train_loss_last": _last_logged_loss(trainer.state.log_history),
        "wall_seconds": round(wall, 1),
        "train_rows": len(train_set),
        **cuts,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        # Over all epochs like tokens_seen: exact for whole epochs, a partial one counts its share.
        "supervised_tokens_seen": round(supervised_per_epoch * (trainer.state.epoch or 0.0)),
        "supervised_tokens_per_epoch": supervised_per_epoch,
        "resumed_from": str(resume_from) if resume_from else None,
        "run_dir": str(run_dir.root),
        "process": f"{trainer.args.process_index + 1}/{trainer.args.world_size}",
    }
    if trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, run_dir, summary, log_path)
    trainer.accelerator.wait_for_everyone()
    trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # no autocast around forward
    if weights_dtype(config) == torch.float32:  # a base loaded in bf16 (GPU) stays as the user set it
        upcast_frozen_linears(trained)
    return TrainingOutcome(summary, trained, tokenizer)


def _forget_logs_after(log_path: Path, step: int) -> None:
    """Log records of the steps the resumed run will train again would otherwise appear twice."""
    if log_path.exists():
        write_jsonl(log_path, [record for record in read_jsonl(log_path) if record["step"] <= step])


def _mean_logged_loss(history: list[dict[str, Any]]) -> float:
    losses = [record["loss"] for record in history if "loss" in record]
    return sum(losses) / len(losses) if losses else float("nan")


def _last_logged_loss(history: list[dict[str, Any]]) -> float:
    losses = [record["loss"] for record in history if "loss" in record]
    return losses[-1] if losses else float("nan")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def save_model(model, tokenizer, run_dir: RunDir, summary: dict[str, Any], log_path: Path) -> None:
    """Adapter or full weights as safetensors with the tokenizer; the loss curve beside them (unless
    matplotlib is missing, as on a bare GPU machine: the weights matter more than the picture)."""
    with staged_directory(run_dir.model) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_json(folder / "training_summary.json", summary)
        if log_path.exists() and importlib.util.find_spec("matplotlib") is None:
            log.warning("model/loss.png not drawn: matplotlib is not installed")
        elif log_path.exists():
            from tunelab.plots import plot_loss

            plot_loss(read_jsonl(log_path), folder / "loss.png")

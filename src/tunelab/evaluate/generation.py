"""A model's answers and its answer loss on chat examples: the two measurements every score is made of.

Generation goes through transformers' `generate` (greedy unless configured), left-padded batches,
with the label trie as a logits processor when answers must be labels. The loss is teacher-forced
cross-entropy over the gold answer tokens, with the same collator and loss as training.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from transformers import LogitsProcessorList

from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.data.chat import answer_budget, encode_example, render_prompt
from tunelab.data.examples import prompt_messages
from tunelab.evaluate.constrain import LabelTrie
from tunelab.model.batching import BatchCollator, answer_token_losses
from tunelab.progress import SilentProgress, progress_bar


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[dict[str, Any]], max_new_tokens: int | None,
                     batch_size: int, label: str, decoding: DecodingConfig | None = None,
                     constraint: LabelTrie | None = None, streamer=None, progress: bool = True) -> list[str]:
    """Generations for each example's prompt (greedy unless `decoding` says otherwise), left-padded batches.

    `max_new_tokens` None: the budget that fits the model (`answer_budget`). With a `constraint`, every
    answer is one of the labels (the budget then fits the longest one). A transformers `streamer`
    receives the tokens as they come (one example at a time); `progress` off for single requests.
    """
    decoding = decoding or DecodingConfig()
    max_new_tokens = answer_budget(tokenizer, max_new_tokens)
    if constraint is not None:
        max_new_tokens = max(max_new_tokens, constraint.longest)
    if decoding.strategy == "sampling":
        torch.manual_seed(decoding.seed)
    outputs: list[str] = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with progress_bar() if progress else nullcontext(SilentProgress()) as shown:
            task = shown.add_task(f"generating ({label})", total=len(examples))
            for start in range(0, len(examples), batch_size):
                batch = examples[start:start + batch_size]
                prompts = [render_prompt(tokenizer, prompt_messages(example)) for example in batch]
                inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                inputs = inputs.to(_device(model))
                processors = [constraint.for_prompts_of_length(inputs["input_ids"].shape[1])] if constraint else []
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           logits_processor=LogitsProcessorList(processors), streamer=streamer,
                                           **decoding.generate_kwargs())
                new_tokens = generated[:, inputs["input_ids"].shape[1]:]
                outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                shown.advance(task, len(batch))
    finally:
        tokenizer.padding_side = padding_side
    return outputs


@torch.no_grad()
def answer_loss(model, tokenizer, examples: list[dict[str, Any]], max_length: int, batch_size: int) -> dict:
    """Mean cross-entropy over the gold answer tokens (teacher forcing) and its perplexity.

    The LM head runs at the answer positions only, so a batch never holds full-vocabulary logits.
    """
    collate = BatchCollator(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    with progress_bar() as progress:
        task = progress.add_task("answer loss", total=len(examples))
        for start in range(0, len(examples), batch_size):
            encoded = [encode_example(tokenizer, e, max_length) for e in examples[start:start + batch_size]]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
            batch = {key: value.to(_device(model)) for key, value in batch.items()}
            loss, tokens = answer_token_losses(model, batch)
            total_loss += loss.item()
            total_tokens += int(tokens)
            progress.advance(task, len(encoded))
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "answer_tokens": total_tokens}


def label_constraint(config: TunelabConfig, tokenizer, labels: list[str] | None) -> LabelTrie | None:
    """The label trie when the task has labels and `evaluate.constrain_to_labels` is on."""
    if not labels or not config.evaluate.constrain_to_labels:
        return None
    return LabelTrie(tokenizer, labels, config.data.system_prompt)


def autocast_for(model):
    """Autocast to bf16 for a model whose frozen linear weights are stored in bf16 (a model being
    trained with bf16 mixed precision, scored mid-run by a search); nothing for any other model."""
    stored = {module.weight.dtype for module in model.modules() if isinstance(module, torch.nn.Linear)}
    if torch.bfloat16 in stored and torch.float32 in {p.dtype for p in model.parameters()}:
        return torch.autocast(_device(model).type, dtype=torch.bfloat16)
    return nullcontext()

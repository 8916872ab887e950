"""A randomly initialised Qwen2 of any shape with a tokenizer trained on the spot: a real model
directory made without a download, for the test suite and for `bench/gpu_check.py` on an offline
GPU machine. It loads through `from_pretrained` like any model; it knows nothing."""

from __future__ import annotations

from pathlib import Path

# The Qwen2.5 template's plain-chat part: a default system turn, <|im_start|>role ... <|im_end|>.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def local_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (Qwen's kind) trained on `texts`, with Qwen's chat tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=SPECIAL_TOKENS[1:3])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def save_random_qwen2(folder: Path, tokenizer, seed: int = 0, device: str = "cpu", dtype=None, **shape) -> Path:
    """A random `Qwen2ForCausalLM` of `shape` (Qwen2Config fields; vocab_size defaults to the tokenizer's,
    a larger one is a published model's embedding size) saved with `tokenizer` into `folder`.
    `device` builds it there (a 1.5B model initialises in seconds on a GPU, minutes on a CPU)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{"vocab_size": len(tokenizer), **shape}, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""Answers restricted to the label set: a token trie that transformers' `generate` applies at each step.

Each label's completion is tokenized exactly as training taught it (the label and the template's
end-of-turn marker), so the constrained model can only write one of the known labels and then stop.
The trie is applied through a `LogitsProcessor`, inside transformers' own decoding loop (greedy,
sampling and beams alike). Reasoning models whose template opens `<think>` think freely: a row is
constrained from the token after its `</think>` on.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from tunelab.data.chat import THINK_CLOSE, render_completion, render_prompt


def label_completion_ids(tokenizer, labels: list[str], system_prompt: str | None) -> list[list[int]]:
    """For each label, the token ids that follow the generation prompt when the answer is that label."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt = render_prompt(tokenizer, [*system, {"role": "user", "content": "?"}])
    sequences = []
    for label in labels:
        example: dict[str, Any] = {"messages": [*system, {"role": "user", "content": "?"},
                                                {"role": "assistant", "content": label}]}
        completion = render_completion(tokenizer, example, prompt)
        sequences.append(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return sequences


class LabelTrie(LogitsProcessor):
    """Allows, after the prompt (or after `</think>`), only continuations of a label's completion."""

    def __init__(self, tokenizer, labels: list[str], system_prompt: str | None):
        think_close = tokenizer.convert_tokens_to_ids(THINK_CLOSE) if THINK_CLOSE in tokenizer.get_vocab() else None
        self.stop = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        self.next_tokens: dict[tuple[int, ...], list[int]] = {}
        self.think_close = None
        longest = 0
        for ids in label_completion_ids(tokenizer, labels, system_prompt):
            if think_close in ids:  # a reasoning template: the constraint starts after </think>
                self.think_close = think_close
                ids = ids[ids.index(think_close) + 1:]
            longest = max(longest, len(ids))
            for end in range(len(ids)):
                allowed = self.next_tokens.setdefault(tuple(ids[:end]), [])
                if ids[end] not in allowed:
                    allowed.append(ids[end])
        self.longest = longest
        self.prompt_length = 0

    def for_prompts_of_length(self, length: int) -> LabelTrie:
        """Set before each batch: generated tokens start after the (left-padded) prompts."""
        self.prompt_length = length
        return self

    def allowed(self, generated: list[int]) -> list[int] | None:
        """Tokens allowed next, None while a reasoning model is still thinking."""
        if self.think_close is not None:
            if self.think_close not in generated:
                return None
            generated = generated[len(generated) - generated[::-1].index(self.think_close):]
        return self.next_tokens.get(tuple(generated), [self.stop])  # done (or finished): only the stop token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        constrained = scores.clone()
        for row, sequence in enumerate(input_ids[:, self.prompt_length:].tolist()):
            allowed = self.allowed(sequence)
            if allowed is not None:
                keep = constrained[row, allowed]
                if keep.isneginf().all():  # sampling's top-k/top-p cut every allowed token: pick among them
                    keep = torch.zeros_like(keep)
                constrained[row] = -torch.inf
                constrained[row, allowed] = keep
        return constrained

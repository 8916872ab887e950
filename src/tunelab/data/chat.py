"""Render chat examples with the base model's own template and mask everything but the answer.

The prompt is rendered exactly as it will be at inference (`add_generation_prompt=True`) and the
completion is what the template puts after it: the answer plus the end-of-turn marker. Prompt and
completion are tokenized separately, so the model is trained on the very prompt tokens it will see
when generating. Reasoning templates that open a `<think>` block in the generation prompt (e.g.
DeepSeek-R1-Distill) get an empty, closed thinking block before the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.examples import answer_text, prompt_messages
from tunelab.model.batching import IGNORE_INDEX

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


PLAIN_ANSWER_BUDGET = 32  # new tokens for a short answer and its end-of-turn marker
THINKING_ANSWER_BUDGET = 1024  # room for a whole thinking block before the answer


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _opens_thinking(prompt: str) -> bool:
    return prompt.rstrip().endswith(THINK_OPEN)


def opens_thinking(tokenizer) -> bool:
    """Whether the template's generation prompt opens a `<think>` block (DeepSeek-R1-Distill does)."""
    return _opens_thinking(render_prompt(tokenizer, [{"role": "user", "content": "?"}]))


def answer_budget(tokenizer, requested: int | None) -> int:
    """`evaluate.max_new_tokens` when set, else what fits the model: a thinking block needs far more."""
    if requested is not None:
        return requested
    return THINKING_ANSWER_BUDGET if opens_thinking(tokenizer) else PLAIN_ANSWER_BUDGET


def thinking_unfinished(generated: str) -> bool:
    """A generation that opened (or was prompted into) a thinking block and never closed it."""
    return THINK_CLOSE not in generated


def render_completion(tokenizer, example: dict[str, Any], prompt: str) -> str:
    """Text that follows the generation prompt in the template's rendering of the full chat."""
    answer = answer_text(example)
    full = tokenizer.apply_chat_template(example["messages"], tokenize=False)
    if full.startswith(prompt):
        return full[len(prompt):]
    # Templates that rewrite the assistant turn (e.g. drop thinking, or force an open <think> in
    # the generation prompt only): keep the answer and the end-of-turn suffix the template adds.
    at = full.rfind(answer)
    suffix = full[at + len(answer):] if at >= 0 else (tokenizer.eos_token or "")
    opening = f"\n{THINK_CLOSE}\n\n" if _opens_thinking(prompt) else ""
    return opening + answer + suffix


def encode_example(tokenizer, example: dict[str, Any], max_length: int) -> Encoded:
    """Token ids and labels: -100 on every prompt token, the token id on every answer token.

    Over-long examples lose the start of the prompt (after its first token) and keep the answer.
    """
    prompt = render_prompt(tokenizer, prompt_messages(example))
    completion = render_completion(tokenizer, example, prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids[: max_length - 1]
    overflow = len(prompt_ids) + len(completion_ids) - max_length
    truncated = overflow > 0
    if truncated:
        prompt_ids = prompt_ids[:1] + prompt_ids[1 + overflow:]
    return Encoded(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        truncated=truncated,
    )


def strip_thinking(text: str) -> str:
    """The answer after a leading `<think>…</think>` block; an unterminated block yields ''."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN) or (THINK_CLOSE in stripped and THINK_OPEN not in stripped):
        # Generation prompts that already opened <think> produce text with only the closing tag.
        end = stripped.find(THINK_CLOSE)
        return "" if end < 0 else stripped[end + len(THINK_CLOSE):].strip()
    return text.strip()

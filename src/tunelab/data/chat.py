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

from tunelab.data.examples import answer_text, prompt_messages, user_text
from tunelab.errors import TunelabError
from tunelab.model.batching import IGNORE_INDEX

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class Encoded:
    """Token ids and labels of one example, and how many tokens `max_length` cut from it: from the
    start of the user's text (`prompt_cut`) and from the end of the answer (`answer_cut`)."""

    input_ids: list[int]
    labels: list[int]
    prompt_cut: int = 0
    answer_cut: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.prompt_cut or self.answer_cut)


PLAIN_ANSWER_BUDGET = 32  # new tokens for a short answer and its end-of-turn marker
THINKING_ANSWER_BUDGET = 1024  # room for a whole thinking block before the answer


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The rendered prompt's token ids, exactly as the evaluation feeds them (no extra special tokens)."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


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

    An example longer than `max_length` loses the start of the user's text first (the system prompt
    and the template's headers stay), then the end of its answer; the end-of-turn marker always stays,
    so the model still learns where an answer stops.
    """
    prompt = render_prompt(tokenizer, prompt_messages(example))
    completion = render_completion(tokenizer, example, prompt)
    prompt_ids = _token_ids(tokenizer, prompt)
    completion_ids = _token_ids(tokenizer, completion)
    if len(prompt_ids) + len(completion_ids) <= max_length:
        return Encoded(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids)
    head, user, tail = _split_at_user_text(prompt, example)
    head_ids, user_ids, tail_ids = (_token_ids(tokenizer, part) for part in (head, user, tail))
    template = len(head_ids) + len(tail_ids)
    answer_cut = 0
    if template + len(completion_ids) > max_length:
        answer, end_of_turn = _split_end_of_turn(completion, answer_text(example))
        answer_ids, end_ids = _token_ids(tokenizer, answer), _token_ids(tokenizer, end_of_turn)
        room = max_length - template - len(end_ids)
        if room < 1:
            raise TunelabError(f"train.max_length={max_length} is shorter than the chat template around one "
                               f"example ({template + len(end_ids) + 1} tokens with a one-token answer): raise it")
        answer_cut = max(0, len(answer_ids) - room)
        completion_ids = answer_ids[:room] + end_ids
    prompt_cut = max(0, len(user_ids) - (max_length - template - len(completion_ids)))
    prompt_ids = head_ids + user_ids[prompt_cut:] + tail_ids
    return Encoded(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
                   prompt_cut=prompt_cut, answer_cut=answer_cut)


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _split_at_user_text(prompt: str, example: dict[str, Any]) -> tuple[str, str, str]:
    """(template and system prompt before the user's last message, its text, the template after it)."""
    text = user_text(example)
    at = prompt.rfind(text) if text else -1
    if at < 0:  # a template that rewrites the user's text: cut the whole prompt after its first character
        return prompt[:1], prompt[1:], ""
    return prompt[:at], text, prompt[at + len(text):]


def _split_end_of_turn(completion: str, answer: str) -> tuple[str, str]:
    """(the completion up to the end of the answer, the end-of-turn marker the template adds after it)."""
    at = completion.rfind(answer)
    if at < 0:
        return completion, ""
    return completion[:at + len(answer)], completion[at + len(answer):]


def strip_thinking(text: str) -> str:
    """The answer after a leading `<think>…</think>` block; an unterminated block yields ''."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN) or (THINK_CLOSE in stripped and THINK_OPEN not in stripped):
        # Generation prompts that already opened <think> produce text with only the closing tag.
        end = stripped.find(THINK_CLOSE)
        return "" if end < 0 else stripped[end + len(THINK_CLOSE):].strip()
    return text.strip()

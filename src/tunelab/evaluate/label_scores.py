"""A probability for every label: the log-likelihood of each label's completion given the prompt.

The prompt runs through the model once; every label's completion (tokenized as in training, with its
end-of-turn marker) is then scored on a copy of that KV cache, many labels per forward pass. A softmax
over the labels' total log-likelihoods gives each prediction a distribution: top-1 and top-3
accuracy, expected calibration error, a reliability plot, and the top labels per row.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from tunelab.data.chat import prompt_ids
from tunelab.data.examples import prompt_messages
from tunelab.progress import SilentProgress, progress_bar

CALIBRATION_BINS = 10


@torch.no_grad()
def label_log_likelihoods(model, tokenizer, examples: list[dict[str, Any]], completions: list[list[int]],
                          labels_per_pass: int = 64, progress: bool = True) -> np.ndarray:
    """(examples, labels) total log-probability of each label's completion (`label_completion_ids`, tokenized
    once by the caller) after each prompt (`progress` off for a single request)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = np.zeros((len(examples), len(completions)), dtype=np.float64)
    with progress_bar() if progress else nullcontext(SilentProgress()) as progress:
        task = progress.add_task("scoring every label", total=len(examples))
        for row, example in enumerate(examples):
            prompt = torch.tensor([prompt_ids(tokenizer, prompt_messages(example))], device=device)
            out = model(input_ids=prompt, use_cache=True)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            for start in range(0, len(completions), labels_per_pass):
                chunk = completions[start:start + labels_per_pass]
                scores[row, start:start + len(chunk)] = _continuations(model, out.past_key_values, first, chunk,
                                                                       prompt.shape[1], pad, device)
            progress.advance(task)
    return scores


def _continuations(model, prompt_cache, first: torch.Tensor, chunk: list[list[int]], prompt_length: int,
                   pad: int, device) -> np.ndarray:
    """Log-likelihood of each completion in `chunk`, the prompt's KV cache repeated for each."""
    width = max(len(ids) for ids in chunk)
    ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=device)
    real = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
    totals = first[ids[:, 0]].double()
    if width > 1:
        cache = copy.deepcopy(prompt_cache)
        cache.batch_repeat_interleave(len(chunk))
        mask = torch.cat([torch.ones(len(chunk), prompt_length, dtype=real.dtype, device=device), real[:, :-1]], 1)
        logits = model(input_ids=ids[:, :-1], attention_mask=mask, past_key_values=cache, use_cache=True).logits
        step = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        totals += (step * real[:, 1:]).sum(1).double()
    return totals.cpu().numpy()


def label_distributions(scores: np.ndarray) -> np.ndarray:
    """Softmax over labels of the completions' log-likelihoods: one distribution per row."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def probability_metrics(probabilities: np.ndarray, gold: list[str], labels: list[str]) -> dict[str, float]:
    """Top-1 and top-3 accuracy and the expected calibration error (confidence of the top label)."""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(g, -1) for g in gold])
    ranked = np.argsort(-probabilities, axis=1)
    confidence = probabilities.max(axis=1)
    correct = ranked[:, 0] == truth
    return {"top1_accuracy": float(correct.mean()),
            "top3_accuracy": float((ranked[:, :3] == truth[:, None]).any(axis=1).mean()),
            "expected_calibration_error": expected_calibration_error(confidence, correct)}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, rows) for each non-empty bin of equal width."""
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    return [(float(confidence[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
            for b in range(CALIBRATION_BINS) if (which == b).any()]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    bins = calibration_bins(confidence, correct)
    return float(sum(rows * abs(mean - accuracy) for mean, accuracy, rows in bins) / max(len(confidence), 1))


def top_labels(probabilities: np.ndarray, labels: list[str], count: int = 3) -> list[list[list[Any]]]:
    """Per row, the `count` most probable labels as [label, probability] pairs."""
    ranked = np.argsort(-probabilities, axis=1)[:, :count]
    return [[[labels[i], round(float(row[i]), 4)] for i in order] for row, order in zip(probabilities, ranked,
                                                                                         strict=True)]

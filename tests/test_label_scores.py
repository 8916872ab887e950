"""Label probabilities: each label's completion scored on the prompt's KV cache, equal to a plain forward."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from test_constrain import LABELS, _examples
from tunelab.data.chat import render_prompt
from tunelab.data.examples import prompt_messages
from tunelab.evaluate.constrain import label_completion_ids
from tunelab.evaluate.label_scores import (
    expected_calibration_error,
    label_distributions,
    label_log_likelihoods,
    probability_metrics,
    top_labels,
)


def _plain_log_likelihood(model, tokenizer, example, completion: list[int]) -> float:
    prompt = tokenizer(render_prompt(tokenizer, prompt_messages(example)), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    steps = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return float(steps.gather(-1, torch.tensor(completion)[:, None]).sum())


def test_cached_label_scores_equal_a_plain_forward_and_give_distributions(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = _examples(3)
    completions = label_completion_ids(tiny_tokenizer, LABELS, "Name the diagnosis.")
    scores = label_log_likelihoods(model, tiny_tokenizer, examples, completions, labels_per_pass=4)
    for row, example in enumerate(examples):
        expected = [_plain_log_likelihood(model, tiny_tokenizer, example, c) for c in completions]
        assert scores[row] == pytest.approx(expected, abs=1e-4)
    probabilities = label_distributions(scores)
    assert probabilities.shape == (3, len(LABELS)) and np.allclose(probabilities.sum(axis=1), 1.0)
    gold = [e["messages"][-1]["content"] for e in examples]
    metrics = probability_metrics(probabilities, gold, LABELS)
    assert metrics["top1_accuracy"] <= metrics["top3_accuracy"]
    top = top_labels(probabilities, LABELS)
    assert [row[0][0] for row in top] == [LABELS[i] for i in probabilities.argmax(axis=1)]


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    confidence = np.array([0.8] * 10)
    assert expected_calibration_error(confidence, np.array([True] * 8 + [False] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.95] * 4), np.array([False] * 4)) == pytest.approx(0.95)

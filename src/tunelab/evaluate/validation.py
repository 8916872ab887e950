"""The search's measure: one number for one model on validation rows (answer loss, accuracy or
macro-F1 of its answers), taken mid-training as well as at the end."""

from __future__ import annotations

from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.examples import answer_text
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import answer_loss, autocast_for, generate_answers, label_constraint
from tunelab.evaluate.scoring import extract_answer, label_metrics


def resolve_metric(metric: str, has_labels: bool) -> str:
    """`auto` is accuracy for label tasks and answer loss otherwise."""
    if metric == "auto":
        return "accuracy" if has_labels else "loss"
    if metric in ("accuracy", "macro_f1") and not has_labels:
        raise TunelabError(f"search.metric={metric} needs labels (data.label_column); use loss")
    return metric


def score_examples(model, tokenizer, examples: list[dict[str, Any]], labels: list[str] | None,
                   config: TunelabConfig, metric: str) -> float:
    """One number for one model on `examples`: answer loss, or accuracy / macro-F1 of generations."""
    was_training = model.training
    model.eval()
    try:
        with autocast_for(model):
            if metric == "loss":
                return answer_loss(model, tokenizer, examples, config.train.max_length,
                                   config.evaluate.batch_size)["loss"]
            generations = generate_answers(model, tokenizer, examples, config.evaluate.max_new_tokens,
                                           config.evaluate.batch_size, "validation", config.evaluate.decoding,
                                           label_constraint(config, tokenizer, labels))
        gold = [answer_text(e) for e in examples]
        return label_metrics(gold, [extract_answer(text) for text in generations], labels)[metric]
    finally:
        model.train(was_training)

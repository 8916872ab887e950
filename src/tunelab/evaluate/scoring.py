"""Turn generated text into an answer and score answers against the gold ones."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any

from tunelab.data.chat import strip_thinking
from tunelab.data.labels import normalize

# The headline numbers, in the order tables show them; the rest come from teacher forcing (label
# likelihoods, answer loss).
GENERATION_METRICS = ("accuracy", "macro_f1", "free_accuracy", "free_macro_f1", "unknown_label_rate",
                      "prefix_accuracy", "truncated_thinking_rate", "exact_match", "token_f1")
PROBABILITY_METRICS = ("top1_accuracy", "top3_accuracy", "expected_calibration_error")
REPORTED_METRICS = (*GENERATION_METRICS, *PROBABILITY_METRICS, "loss", "perplexity")


def extract_answer(generated: str) -> str:
    """The answer a user would read: after any thinking block, the first non-empty line."""
    answer = strip_thinking(generated)
    for line in answer.splitlines():
        if line.strip():
            return line.strip()
    return ""


@lru_cache(maxsize=8)
def _by_normal(labels: tuple[str, ...]) -> dict[str, str]:
    """Normalised label -> label, built once per label set (not once per answer scored)."""
    return {normalize(label): label for label in labels}


def match_label(answer: str, labels: list[str]) -> str | None:
    """The known label the answer is, after normalisation; None for anything else.

    Strict on purpose: "Psoriasis or eczema" and "Psoriasis-like rash" name no label.
    """
    return _by_normal(tuple(labels)).get(normalize(answer))


def match_label_prefix(answer: str, labels: list[str]) -> str | None:
    """The lenient reading behind `prefix_accuracy`: the longest label the answer starts with."""
    normalized = normalize(answer)
    by_normal = _by_normal(tuple(labels))
    prefixes = [key for key in by_normal if re.match(re.escape(key) + r"\b", normalized)]
    return by_normal[max(prefixes, key=len)] if prefixes else None


def label_metrics(gold: list[str], answers: list[str], labels: list[str]) -> dict[str, Any]:
    """Strict accuracy, macro-F1 and per-class recall, the share of answers that name no label, and
    the lenient prefix accuracy beside them (never the headline)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    unknown = "<unknown>"
    predicted = [match_label(answer, labels) for answer in answers]
    filled = [p if p is not None else unknown for p in predicted]
    tested = set(gold)
    scored = [label for label in labels if label in tested]  # averages cover the labels actually tested
    recalls = recall_score(gold, filled, labels=scored, average=None, zero_division=0)
    prefix = [match_label_prefix(answer, labels) for answer in answers]
    return {
        "accuracy": float(accuracy_score(gold, filled)),
        "macro_f1": float(f1_score(gold, filled, labels=scored, average="macro", zero_division=0)),
        "unknown_label_rate": sum(p is None for p in predicted) / max(len(predicted), 1),
        "prefix_accuracy": sum(p == g for p, g in zip(prefix, gold, strict=True)) / max(len(gold), 1),
        "per_class_recall": {label: float(r) for label, r in zip(scored, recalls, strict=True)},
    }


def token_f1(prediction: str, reference: str) -> float:
    predicted_tokens, reference_tokens = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(predicted_tokens) & Counter(reference_tokens)).values())
    if not predicted_tokens or not reference_tokens or common == 0:
        return float(predicted_tokens == reference_tokens)
    precision, recall = common / len(predicted_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def text_metrics(gold: list[str], answers: list[str]) -> dict[str, float]:
    pairs = list(zip(gold, answers, strict=True))
    return {
        "exact_match": sum(normalize(a) == normalize(g) for g, a in pairs) / max(len(pairs), 1),
        "token_f1": sum(token_f1(a, g) for g, a in pairs) / max(len(pairs), 1),
    }


def comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """The side-by-side table every view shows: columns base, tuned, baseline (those present), a row
    per reported metric of the tuned model; None where a column has no such number (the baseline has
    no loss)."""
    names = [name for name in ("base", "tuned", "baseline") if name in results]
    keys = [key for key in REPORTED_METRICS if key in results.get("tuned", results[names[-1]])]
    return names, [(key, [results[name].get(key) for name in names]) for key in keys]


def labels_by_error(results: dict[str, Any], predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tested label, worst first: its test rows, each model's recall on it, and the tuned
    model's most frequent wrong answer. At 150 labels the question is which ones fail; this says."""
    names = [name for name in ("tuned", "base", "baseline") if "per_class_recall" in results.get(name, {})]
    if not names:
        return []
    rows_of = Counter(p["gold"] for p in predictions)
    wrong = Counter((p["gold"], p.get("tuned_answer")) for p in predictions
                    if p.get("tuned_answer") is not None and p["tuned_answer"] != p["gold"])
    worst_answer: dict[str, str] = {}
    for (gold, answer), _ in wrong.most_common():
        worst_answer.setdefault(gold, answer)
    table = [{"label": label, "test_rows": rows_of.get(label, 0),
              **{f"{name}_recall": results[name]["per_class_recall"].get(label) for name in names},
              "most_frequent_wrong_answer": worst_answer.get(label, "")}
             for label in results[names[0]]["per_class_recall"]]
    key = f"{names[0]}_recall"
    return sorted(table, key=lambda row: (row[key], -row["test_rows"], row["label"]))

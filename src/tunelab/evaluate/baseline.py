"""The classical baseline every label evaluation is measured against: TF-IDF + logistic regression.

Fitted on the run's own training split and scored on the same examples as the models, in seconds:
if fine-tuning an LLM does not beat it, the user should know, in one sentence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.data.examples import user_text
from tunelab.data.vectorize import fit_tfidf
from tunelab.evaluate.scoring import label_metrics

BASELINE_NAME = "TF-IDF + logistic regression"


def fit_predict(train: list[dict[str, Any]], examples: list[dict[str, Any]]) -> list[str]:
    """Word uni- and bigrams with sublinear TF, C=10: the strong form, not scikit-learn's defaults.
    With a single training label it is that label, always (what any classifier would learn)."""
    from sklearn.linear_model import LogisticRegression

    trained_labels = [e["label"] for e in train]
    if len(set(trained_labels)) < 2:
        return [trained_labels[0]] * len(examples)
    vectorizer, features = fit_tfidf([user_text(e) for e in train], dtype=np.float64)
    classifier = LogisticRegression(max_iter=2000, C=10).fit(features, trained_labels)
    return [str(label) for label in classifier.predict(vectorizer.transform([user_text(e) for e in examples]))]


def baseline_metrics(train: list[dict[str, Any]], examples: list[dict[str, Any]],
                     labels: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The baseline's metrics (as the models', plus its name and training size) and its predictions."""
    predicted = fit_predict(train, examples)
    metrics = label_metrics([e["label"] for e in examples], predicted, labels)
    return {"model": BASELINE_NAME, "train_rows": len(train), **metrics}, predicted


def verdict(results: dict[str, Any]) -> str | None:
    """One sentence: does the tuned model beat the baseline on strict accuracy?"""
    if "baseline" not in results or "tuned" not in results:
        return None
    tuned, baseline = results["tuned"]["accuracy"], results["baseline"]["accuracy"]
    if tuned > baseline:
        outcome = "beats"
    elif tuned == baseline:
        outcome = "ties with"
    else:
        outcome = "does NOT beat"
    return (f"The tuned model {outcome} the {BASELINE_NAME} baseline trained on the same "
            f"{results['baseline']['train_rows']} rows: accuracy {tuned:.4f} vs {baseline:.4f}.")

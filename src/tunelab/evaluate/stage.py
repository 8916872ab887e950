"""The evaluate stage: score the tuned model, its base and a TF-IDF baseline on the same test rows, and
write eval/ (metrics.json, predictions.jsonl, confusion matrices, reliability diagram).

Both models see identical prompts rendered with the base model's chat template and decode greedily.
For LoRA runs the base model is the tuned one with its adapter switched off, so only one copy of the
weights is in memory.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.config import TunelabConfig
from tunelab.data.chat import answer_budget, opens_thinking, thinking_unfinished
from tunelab.data.examples import answer_text, rows_to_examples, user_text
from tunelab.data.labels import check_distinct_labels, known_labels
from tunelab.data.load import load_rows
from tunelab.data.split import stratified_subset
from tunelab.errors import TunelabError
from tunelab.evaluate.baseline import baseline_metrics, verdict
from tunelab.evaluate.constrain import LabelTrie, label_completion_ids
from tunelab.evaluate.generation import answer_loss, generate_answers, label_constraint
from tunelab.evaluate.label_scores import (
    calibration_bins,
    label_distributions,
    label_log_likelihoods,
    probability_metrics,
    top_labels,
)
from tunelab.evaluate.scoring import extract_answer, label_metrics, labels_by_error, match_label, text_metrics
from tunelab.model.adapters import load_tuned
from tunelab.plots import plot_confusion, plot_reliability
from tunelab.rundir import RunDir, read_jsonl, staged_directory, write_json, write_jsonl

log = logging.getLogger(__name__)


FREE_ANSWER_METRICS = ("unknown_label_rate", "prefix_accuracy")  # only free answers can miss the label set


def score_model(model, tokenizer, examples, labels: list[str] | None, config: TunelabConfig, name: str,
                constraint: LabelTrie | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Metrics and generations of one model: free answers, and with a `constraint` also answers
    restricted to the labels, which then give the headline label metrics (free ones beside them)."""
    evaluate = config.evaluate
    generations = {"free": generate_answers(model, tokenizer, examples, evaluate.max_new_tokens,
                                            evaluate.batch_size, name, evaluate.decoding)}
    answers = [extract_answer(text) for text in generations["free"]]
    gold = [answer_text(example) for example in examples]
    metrics: dict[str, Any] = text_metrics(gold, answers)
    if labels:
        metrics |= label_metrics(gold, answers, labels)
    if labels and constraint:
        generations["constrained"] = generate_answers(model, tokenizer, examples, evaluate.max_new_tokens,
                                                      evaluate.batch_size, f"{name}, labels only", evaluate.decoding,
                                                      constraint)
        free = {f"free_{key}": metrics[key] for key in ("accuracy", "macro_f1")}
        constrained = label_metrics(gold, [extract_answer(t) for t in generations["constrained"]], labels)
        metrics |= {key: value for key, value in constrained.items() if key not in FREE_ANSWER_METRICS} | free
    if labels and evaluate.scores_label_probabilities(len(labels)):
        completions = label_completion_ids(tokenizer, labels, config.data.system_prompt)
        probabilities = label_distributions(label_log_likelihoods(model, tokenizer, examples, completions))
        metrics |= probability_metrics(probabilities, gold, labels)
        generations["top_labels"] = top_labels(probabilities, labels)
    if opens_thinking(tokenizer):
        scored = generations.get("constrained", generations["free"])
        metrics["truncated_thinking_rate"] = sum(map(thinking_unfinished, scored)) / max(len(scored), 1)
    metrics |= answer_loss(model, tokenizer, examples, config.train.max_length, evaluate.batch_size)
    return metrics, generations


def load_eval_examples(config: TunelabConfig, run_dir: RunDir, data_file: str | None) -> list[dict[str, Any]]:
    if data_file:
        return rows_to_examples(load_rows(data_file), config.data, data_file)
    return read_jsonl(run_dir.split("test"))


def run_evaluation(config: TunelabConfig, run_dir: RunDir, data_file: str | None = None,
                   write: bool = True) -> dict[str, Any]:
    """Write eval/metrics.json, eval/predictions.jsonl and confusion matrices; return the metrics."""
    torch.set_num_threads(config.train.num_threads or os.cpu_count() or 1)
    examples = load_eval_examples(config, run_dir, data_file)
    if not examples:
        raise TunelabError(f"{data_file or run_dir.split('test')}: no test examples")
    examples = stratified_subset(examples, config.evaluate.max_examples, config.seed, "evaluate.max_examples")
    tuned, tokenizer, base_context = load_tuned(config, run_dir)
    tuned.eval()
    labels = known_labels(run_dir, examples) if config.data.label_column else None
    if labels:
        check_distinct_labels(labels, data_file or str(run_dir.split("test")))
    results: dict[str, Any] = {"n_test": len(examples), "data": data_file or "data/test.jsonl",
                               "decoding": config.evaluate.decoding.model_dump(),
                               "max_new_tokens": answer_budget(tokenizer, config.evaluate.max_new_tokens)}
    constraint = label_constraint(config, tokenizer, labels)
    results["constrained_to_labels"] = constraint is not None
    generations: dict[str, dict[str, list[str]]] = {}
    results["tuned"], generations["tuned"] = score_model(tuned, tokenizer, examples, labels, config, "tuned",
                                                         constraint)
    if config.evaluate.compare_base:
        with base_context() as base:
            results["base"], generations["base"] = score_model(base, tokenizer, examples, labels, config, "base",
                                                               constraint)
    baseline_answers = None
    if labels and config.evaluate.baseline:
        results["baseline"], baseline_answers = baseline_metrics(read_jsonl(run_dir.split("train")), examples, labels)
        results["verdict"] = verdict(results)
    if write:
        _write(run_dir.evaluation(data_file), examples, labels, results, generations, baseline_answers)
    return results


def _write(destination: Path, examples, labels, results, generations, baseline_answers) -> None:
    """predictions.jsonl holds each model's scored answer (constrained when the labels were enforced),
    its free answer and its top-3 labels with probabilities beside it, and the baseline's label."""
    headline = {name: kinds.get("constrained", kinds["free"]) for name, kinds in generations.items()}
    ranked = {name: kinds["top_labels"] for name, kinds in generations.items() if "top_labels" in kinds}
    predictions = []
    for index, example in enumerate(examples):
        record = {"id": example.get("id"), "input": user_text(example), "gold": answer_text(example)}
        for name, texts in headline.items():
            record[f"{name}_answer"] = extract_answer(texts[index])
            record[f"{name}_generation"] = texts[index]
            if "constrained" in generations[name]:
                record[f"{name}_free_answer"] = extract_answer(generations[name]["free"][index])
            if name in ranked:
                record[f"{name}_top_labels"] = ranked[name][index]
        if baseline_answers:
            record["baseline_answer"] = baseline_answers[index]
        predictions.append(record)
    with staged_directory(destination) as folder:
        write_json(folder / "metrics.json", results)
        write_jsonl(folder / "predictions.jsonl", predictions)
        per_label = labels_by_error(results, predictions)
        if per_label:
            with open(folder / "per_label.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(per_label[0]))
                writer.writeheader()
                writer.writerows(per_label)
        if labels:
            gold = [answer_text(e) for e in examples]
            for name, texts in headline.items():
                predicted = [match_label(extract_answer(t), labels) for t in texts]
                accuracy = results[name]["accuracy"]
                plot_confusion(gold, predicted, labels, folder / f"confusion_{name}.png",
                               f"{name} model, accuracy {accuracy:.3f}")
            if ranked:
                plot_reliability({name: _reliability(top, gold) for name, top in ranked.items()},
                                 folder / "reliability.png")


def _reliability(top: list[list[list[Any]]], gold: list[str]) -> list[tuple[float, float, int]]:
    confidence = np.array([row[0][1] for row in top])
    correct = np.array([row[0][0] == label for row, label in zip(top, gold, strict=True)])
    return calibration_bins(confidence, correct)


def example_rows(folder: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` predictions written into an evaluation folder."""
    path = folder / "predictions.jsonl"
    return read_jsonl(path)[:count] if path.exists() else []

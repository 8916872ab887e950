"""Score the base model and the tuned model on the same test prompts.

Both models see identical prompts rendered with the base model's chat template and decode
greedily. For LoRA runs the base model is the tuned one with its adapter switched off, so only
one copy of the weights is in memory.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList

from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.data.chat import answer_budget, encode_example, opens_thinking, render_prompt, thinking_unfinished
from tunelab.data.examples import answer_text, prompt_messages, rows_to_examples, user_text
from tunelab.data.labels import check_distinct_labels
from tunelab.data.load import load_rows
from tunelab.errors import TunelabError
from tunelab.evaluate.baseline import baseline_metrics, verdict
from tunelab.evaluate.constrain import LabelTrie
from tunelab.evaluate.label_scores import (
    calibration_bins,
    label_distributions,
    label_log_likelihoods,
    probability_metrics,
    top_labels,
)
from tunelab.evaluate.scoring import extract_answer, label_metrics, match_label, text_metrics
from tunelab.model.adapters import load_tuned
from tunelab.model.batching import BatchCollator, answer_token_losses
from tunelab.plots import plot_confusion, plot_reliability
from tunelab.progress import progress_bar
from tunelab.rundir import RunDir, read_jsonl, staged_directory, write_json, write_jsonl

log = logging.getLogger(__name__)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[dict[str, Any]], max_new_tokens: int | None,
                     batch_size: int, label: str, decoding: DecodingConfig | None = None,
                     constraint: LabelTrie | None = None) -> list[str]:
    """Generations for each example's prompt (greedy unless `decoding` says otherwise), left-padded batches.

    `max_new_tokens` None: the budget that fits the model (`answer_budget`). With a `constraint`, every
    answer is one of the labels (the budget then fits the longest one).
    """
    decoding = decoding or DecodingConfig()
    max_new_tokens = answer_budget(tokenizer, max_new_tokens)
    if constraint is not None:
        max_new_tokens = max(max_new_tokens, constraint.longest)
    if decoding.strategy == "sampling":
        torch.manual_seed(decoding.seed)
    outputs: list[str] = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"generating ({label})", total=len(examples))
            for start in range(0, len(examples), batch_size):
                batch = examples[start:start + batch_size]
                prompts = [render_prompt(tokenizer, prompt_messages(example)) for example in batch]
                inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                inputs = inputs.to(_device(model))
                processors = [constraint.for_prompts_of_length(inputs["input_ids"].shape[1])] if constraint else []
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                           logits_processor=LogitsProcessorList(processors),
                                           **decoding.generate_kwargs())
                new_tokens = generated[:, inputs["input_ids"].shape[1]:]
                outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                progress.advance(task, len(batch))
    finally:
        tokenizer.padding_side = padding_side
    return outputs


@torch.no_grad()
def answer_loss(model, tokenizer, examples: list[dict[str, Any]], max_length: int, batch_size: int) -> dict:
    """Mean cross-entropy over the gold answer tokens (teacher forcing) and its perplexity.

    The LM head runs at the answer positions only, so a batch never holds full-vocabulary logits.
    """
    collate = BatchCollator(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        encoded = [encode_example(tokenizer, e, max_length) for e in examples[start:start + batch_size]]
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
        batch = {key: value.to(_device(model)) for key, value in batch.items()}
        loss, tokens = answer_token_losses(model, batch)
        total_loss += loss.item()
        total_tokens += int(tokens)
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "answer_tokens": total_tokens}


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
        probabilities = label_distributions(label_log_likelihoods(model, tokenizer, examples, labels,
                                                                  config.data.system_prompt))
        metrics |= probability_metrics(probabilities, gold, labels)
        generations["top_labels"] = top_labels(probabilities, labels)
    if opens_thinking(tokenizer):
        scored = generations.get("constrained", generations["free"])
        metrics["truncated_thinking_rate"] = sum(map(thinking_unfinished, scored)) / max(len(scored), 1)
    metrics |= answer_loss(model, tokenizer, examples, config.train.max_length, evaluate.batch_size)
    return metrics, generations


def label_constraint(config: TunelabConfig, tokenizer, labels: list[str] | None) -> LabelTrie | None:
    """The label trie when the task has labels and `evaluate.constrain_to_labels` is on."""
    if not labels or not config.evaluate.constrain_to_labels:
        return None
    return LabelTrie(tokenizer, labels, config.data.system_prompt)


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
    examples = evaluation_subset(examples, config.evaluate.max_examples, config.seed)
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


def evaluation_subset(examples: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """At most `limit` rows, drawn stratified by label with a fixed seed: never the first rows of a
    file that may be sorted by label. Labels the subset leaves out are named."""
    if not limit or limit >= len(examples):
        return examples
    # Systematic stratified draw: the k-th of a label's n shuffled rows gets the key (k + u) / n, so
    # taking the smallest keys gives each label its share of the rows, to within one.
    rng = np.random.default_rng(seed)
    by_label: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.get("label"), []).append(index)
    keys = np.empty(len(examples))
    for rows in by_label.values():
        order = rng.permutation(len(rows))
        keys[np.array(rows)[order]] = (np.arange(len(rows)) + rng.random()) / len(rows)
    subset = [examples[i] for i in sorted(np.argsort(keys, kind="stable")[:limit])]
    log.info("scoring a label-stratified subset of %d of %d rows (evaluate.max_examples, seed %d)",
             len(subset), len(examples), seed)
    missing = sorted({e["label"] for e in examples if "label" in e} - {e["label"] for e in subset if "label" in e})
    if missing:
        log.warning("%d labels are not in the scored subset (raise evaluate.max_examples to cover them): %s%s",
                    len(missing), ", ".join(missing[:20]), " ..." if len(missing) > 20 else "")
    return subset


def known_labels(run_dir: RunDir, examples: list[dict[str, Any]]) -> list[str]:
    """Labels seen in training (the model's vocabulary of answers) plus any in the scored data."""
    train = read_jsonl(run_dir.split("train")) if run_dir.split("train").exists() else []
    return sorted({e["label"] for e in train + examples if "label" in e})


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


def resolve_metric(metric: str, has_labels: bool) -> str:
    """`auto` is accuracy for label tasks and answer loss otherwise."""
    if metric == "auto":
        return "accuracy" if has_labels else "loss"
    if metric in ("accuracy", "macro_f1") and not has_labels:
        raise TunelabError(f"search.metric={metric} needs labels (data.label_column); use loss")
    return metric


def autocast_for(model):
    """Autocast to bf16 for a model whose frozen linear weights are stored in bf16 (a model being
    trained with bf16 mixed precision, scored mid-run by a search); nothing for any other model."""
    stored = {module.weight.dtype for module in model.modules() if isinstance(module, torch.nn.Linear)}
    if torch.bfloat16 in stored and torch.float32 in {p.dtype for p in model.parameters()}:
        return torch.autocast(_device(model).type, dtype=torch.bfloat16)
    return nullcontext()


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

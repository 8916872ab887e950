"""Ask another copy of the tuned model (a download, a merged export) the test prompts the evaluation
answered, exactly as it answered them, and compare.

The prompts are generated in the evaluation's batches (same padding, so the same arithmetic), with
its decoding, answer budget and label constraint, all read from eval/metrics.json: a faithful copy
reproduces eval/predictions.jsonl answer for answer.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.data.labels import known_labels
from tunelab.errors import TunelabError
from tunelab.evaluate.constrain import LabelTrie
from tunelab.evaluate.generation import generate_answers
from tunelab.evaluate.scoring import extract_answer
from tunelab.rundir import RunDir, read_jsonl


def recorded_answers(config: TunelabConfig, run_dir: RunDir, count: int,
                     purpose: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(test examples, their eval/predictions.jsonl rows): the evaluation's first batches covering `count`."""
    predictions_path = run_dir.eval / "predictions.jsonl"
    if not predictions_path.is_file():
        raise TunelabError(f"{run_dir.root}: no eval/predictions.jsonl to {purpose} against "
                           "(run `tunelab evaluate` first)")
    batch = config.evaluate.batch_size
    predictions = read_jsonl(predictions_path)[: math.ceil(count / batch) * batch]
    test = {example.get("id"): example for example in read_jsonl(run_dir.split("test"))}
    return [test[row["id"]] for row in predictions], predictions


def replayed_answers(model, tokenizer, config: TunelabConfig, run_dir: RunDir, examples: list[dict[str, Any]],
                     label: str) -> list[str]:
    """`model`'s answers to `examples`, generated the way the evaluation generated its own."""
    metrics = json.loads((run_dir.eval / "metrics.json").read_text())
    model.eval()
    labels = known_labels(run_dir, examples) if metrics.get("constrained_to_labels") else None
    constraint = LabelTrie(tokenizer, labels, config.data.system_prompt) if labels else None
    texts = generate_answers(model, tokenizer, examples, metrics["max_new_tokens"], config.evaluate.batch_size,
                             label, DecodingConfig(**metrics["decoding"]), constraint)
    return [extract_answer(text) for text in texts]


def first_difference(predictions: list[dict[str, Any]], answers: list[str]) -> tuple[int, str, str] | None:
    """(1-based prompt number, recorded answer, new answer) of the first answer that changed, or None."""
    for number, (row, answer) in enumerate(zip(predictions, answers, strict=True), start=1):
        if row["tuned_answer"] != answer:
            return number, row["tuned_answer"], answer
    return None

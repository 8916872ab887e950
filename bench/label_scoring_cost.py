"""What each way of answering a label task costs per example, side by side on the same rows.

Usage: python bench/label_scoring_cost.py [--rows 48] [--batch-size 16]

SmolLM2-135M-Instruct (the base model: costs do not depend on the weights' values) on symptom2disease
(24 labels) and CLINC150 (151 labels): free greedy generation, generation constrained to the labels
(token trie), and label probabilities (every label's completion scored on the prompt's KV cache).
Prints milliseconds per example and the ratio to free generation.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from common import SHARED_CSV, parser_with_csv

from tunelab.config import ModelConfig
from tunelab.evaluate.constrain import LabelTrie, label_completion_ids
from tunelab.evaluate.generation import generate_answers
from tunelab.evaluate.label_scores import label_log_likelihoods
from tunelab.model.load import load_model, load_tokenizer
from tunelab.model.source import materialize

SYSTEM = "Name the label."


def rows(csv: str, text: str, label: str, count: int) -> tuple[list[dict], list[str]]:
    frame = pd.read_csv(csv)
    labels = sorted(frame[label].astype(str).unique())
    picked = frame.sample(n=count, random_state=0)
    examples = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
                              {"role": "assistant", "content": str(a)}]} for t, a in zip(picked[text], picked[label],
                                                                                         strict=True)]
    return examples, labels


def timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def main() -> None:
    parser = parser_with_csv(__doc__)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ModelConfig(name_or_path="smollm2-135m-instruct")
    source = materialize(config)
    tokenizer, model = load_tokenizer(source, config), load_model(source, config).eval()
    datasets = {"symptom2disease": (args.csv, "text", "label"),
                "clinc150": (str(SHARED_CSV.parent / "clinc150" / "test.csv"), "text", "intent")}
    print("| data | labels | free greedy ms/row | constrained ms/row | label probabilities ms/row | "
          "constrained / free | probabilities / free |")
    print("|---|---|---|---|---|---|---|")
    for name, (csv, text, label) in datasets.items():
        examples, labels = rows(csv, text, label, args.rows)
        trie = LabelTrie(tokenizer, labels, SYSTEM)
        free = timed(generate_answers, model, tokenizer, examples, 32, args.batch_size, "free")
        constrained = timed(generate_answers, model, tokenizer, examples, 32, args.batch_size, "labels",
                            constraint=trie)
        completions = label_completion_ids(tokenizer, labels, SYSTEM)
        scored = timed(label_log_likelihoods, model, tokenizer, examples, completions)
        per_row = [1000 * seconds / len(examples) for seconds in (free, constrained, scored)]
        print(f"| {name} | {len(labels)} | {per_row[0]:.0f} | {per_row[1]:.0f} | {per_row[2]:.0f} | "
              f"{constrained / free:.2f}x | {scored / free:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

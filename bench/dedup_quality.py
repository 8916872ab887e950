"""Near-duplicate removal on real data: what it removes, whether labels ever differ, and the effect.

Usage: python bench/dedup_quality.py [--pairs 30] [--train]

Part 1, on ../shared/data/symptom2disease.csv (tunelab's own split) and CLINC150 (train.csv with the
official test.csv as `data.test_file`), prepare's near-duplicate step under two rules, on the same
TF-IDF vectors and threshold (0.02):
- `vectors alone`: every candidate pair within the threshold is a copy, whatever the labels (the
  rule before label-aware removal, without its chains through removed rows);
- `tunelab` (the defaults): candidates confirmed on the words (`prepare.dedup_word_share`), pairs
  with different labels kept and reported as conflicts.
It prints rows removed, removed pairs whose labels differ, conflicts, and a random sample of removed
pairs (new rule) for a reader to judge.

Part 2, the injected-copy recall on symptom2disease (as in tests/test_prepare.py): 100 rows edited
the way users make near copies (a word replaced or dropped, a typo, clauses reordered).

Part 3 (`--train`): SmolLM2-135M-Instruct + LoRA on a 10% kmeans sample of CLINC150's training file
with near-duplicate removal on (defaults) and off (`dedup_threshold: null`), same settings and
seed, scored on the whole official test file (exact match after normalisation).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import SHARED_CSV, parser_with_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from near_copies import edit_like_a_user  # noqa: E402  the edits the recall test makes
from tunelab.config import TunelabConfig  # noqa: E402
from tunelab.data.dedup import find_near_duplicates  # noqa: E402
from tunelab.data.prepare import build_splits  # noqa: E402
from tunelab.data.vectorize import tfidf_vectors  # noqa: E402

CLINC = SHARED_CSV.parent / "clinc150"
RULES = {"vectors alone": {"dedup_word_share": None, "dedup_conflicts": "drop"}, "tunelab": {}}


def datasets(csv: str) -> dict[str, dict]:
    return {
        "symptom2disease": {"source": csv, "input_column": "text", "label_column": "label"},
        "clinc150": {"source": str(CLINC / "train.csv"), "test_file": str(CLINC / "test.csv"),
                     "input_column": "text", "label_column": "intent"},
    }


def removal_table(csv: str, shown_pairs: int) -> None:
    print("| data | rule | vector candidates | exact removed | near removed | removed with other label "
          "| conflicts kept | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    samples = {}
    for name, data in datasets(csv).items():
        for rule, settings in RULES.items():
            started = time.perf_counter()
            prepared = build_splits(TunelabConfig(data=data, prepare=settings))
            seconds = time.perf_counter() - started
            near = prepared.report["near_duplicates"]
            removed = [d for d in prepared.duplicates if d["removed"]]
            other_label = sum(d["label"] != d["kept_label"] for d in removed if d["kind"] == "near")
            kept_conflicts = near["conflicts"] if rule == "tunelab" else 0
            print(f"| {name} | {rule} | {near['vector_candidates']:,} | {prepared.report['exact_duplicates_removed']}"
                  f" | {near['removed']:,} | {other_label} | {kept_conflicts} | {seconds:.1f} |")
            if rule == "tunelab":
                samples[name] = [d for d in removed if d["kind"] == "near"], near["conflicting_pairs"]
    rng = random.Random(0)
    for name, (removed, conflicts) in samples.items():
        print(f"\n{name}: {min(shown_pairs, len(removed))} removed near pairs drawn at random "
              "(distance, words changed, label: removed row || kept row)")
        for d in rng.sample(removed, min(shown_pairs, len(removed))):
            print(f"- {d['cosine_distance']:.4f}, {d['word_edits']}, {d['label']}: {d['text']} || {d['kept_text']}")
        print(f"{name}: conflicting pairs kept ({len(conflicts)})")
        for d in conflicts:
            print(f"- {d['cosine_distance']:.4f}, {d['word_edits']}: [{d['label']}] {d['text']} || "
                  f"[{d['kept_label']}] {d['kept_text']}")


def injected_recall(csv: str) -> None:
    def removed(texts: list[str], word_share: float | None) -> dict[int, int]:
        found = find_near_duplicates(tfidf_vectors(texts, 128, 0), 0.02, texts=texts, word_share=word_share)
        return {row: kept for row, kept, _ in found.removed}

    texts = list(dict.fromkeys(pd.read_csv(csv)["text"]))
    for rule, share in (("vectors alone", None), ("tunelab", 0.2)):
        already = removed(texts, share)
        base = [text for index, text in enumerate(texts) if index not in already]
        rng = random.Random(0)
        sources = rng.sample(range(len(base)), 100)
        flagged = removed(base + [edit_like_a_user(base[s], rng) for s in sources], share)
        found = [i for i, kept in flagged.items() if i >= len(base) and kept == sources[i - len(base)]]
        print(f"injected copies, {rule}: recall {len(found) / 100:.2f}, precision {len(found) / len(flagged):.2f} "
              f"({len(flagged)} rows removed from {len(base)} + 100 injected)")


def train_effect(epochs: float, seed: int) -> None:
    from tunelab.pipeline import run_pipeline
    from tunelab.rundir import RunDir

    print("\n| near-duplicate removal | train sample | test accuracy | macro-F1 | wall s |")
    print("|---|---|---|---|---|")
    for label, threshold in (("on (defaults)", 0.02), ("off (exact only)", None)):
        config = TunelabConfig(
            data={**datasets("")["clinc150"], "system_prompt": "Name the intent of the request."},
            prepare={"dedup_threshold": threshold, "sample": 0.1, "strategy": "kmeans"},
            model={"name_or_path": "smollm2-135m-instruct"},
            train={"method": "lora", "learning_rate": 1e-3, "epochs": epochs, "per_device_batch_size": 8,
                   "gradient_accumulation_steps": 2, "max_length": 128, "save_steps": 1000},
            evaluate={"max_new_tokens": 12, "batch_size": 64, "compare_base": False},
            output_dir=f"runs/bench-dedup-{'on' if threshold else 'off'}-{seed}", seed=seed)
        started = time.perf_counter()
        run_pipeline(config, RunDir(config.output_dir))
        run = RunDir(config.output_dir)
        metrics = json.loads((run.eval / "metrics.json").read_text())["tuned"]
        size = json.loads((run.data / "prepare_report.json").read_text())["sizes"]["train"]
        print(f"| {label} | {size} | {metrics['accuracy']:.4f} | {metrics['macro_f1']:.4f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


def main() -> None:
    parser = parser_with_csv(__doc__)
    parser.add_argument("--pairs", type=int, default=30, help="removed pairs printed per dataset")
    parser.add_argument("--train", action="store_true", help="also train SmolLM2 with removal on and off")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    np.set_printoptions(precision=4)
    removal_table(args.csv, args.pairs)
    print()
    injected_recall(args.csv)
    if args.train:
        train_effect(args.epochs, args.seed)


if __name__ == "__main__":
    main()

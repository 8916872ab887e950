"""Data selection with the real learner: SmolLM2 + LoRA on a 10% CLINC150 sample by kmeans, stratified, random.

Usage: python bench/selection_llm.py [--config bench/clinc150-selection.yaml] [--seeds 0 1 2]
       [--strategies kmeans stratified random] [--test-rows N] [--output runs/selection-llm] [--set KEY=VALUE]

For each strategy and seed, tunelab's own stages do the work: prepare (the same deduplicated
training pool for every cell) draws the sample with `prepare.strategy` and `seed`, train fits LoRA
with the config's settings, and the tuned model answers the official test file (or a
label-stratified `--test-rows` of it) with answers constrained to the labels. Scores: strict
accuracy over all labels, in-scope accuracy (rows whose intent is not `oos`) and out-of-scope recall
(`oos` rows answered `oos`). TF-IDF + logistic regression (the baseline of every tunelab evaluation)
is fitted on the same sample, and once on the whole official training file.

A cell costs about 8 minutes of training and 9 of scoring 5,500 rows on 2 cores: nine cells are
hours. Each finished cell is appended to OUTPUT/results.jsonl and skipped when the script runs
again, so the benchmark can be spread over several sittings; the table (means ± std over the seeds
finished, wall times) is printed from that file every time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_OF_SCOPE = "oos"


def scores(gold: list[str], answers: list[str]) -> dict[str, float]:
    """Strict accuracy, in-scope accuracy and out-of-scope recall of label answers."""
    in_scope = [answer == label for label, answer in zip(gold, answers, strict=True) if label != OUT_OF_SCOPE]
    out_of_scope = [answer == OUT_OF_SCOPE for label, answer in zip(gold, answers, strict=True)
                    if label == OUT_OF_SCOPE]
    return {"accuracy": sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold),
            "in_scope_accuracy": sum(in_scope) / max(len(in_scope), 1),
            "oos_recall": sum(out_of_scope) / max(len(out_of_scope), 1)}


def run_cell(config_path: Path, overrides: list[str], test_rows: int | None) -> dict:
    """Prepare, train and score one (strategy, seed); the TF-IDF baseline on the same sample."""
    from tunelab import pipeline
    from tunelab.data.labels import known_labels
    from tunelab.data.split import stratified_subset
    from tunelab.evaluate.baseline import fit_predict
    from tunelab.evaluate.generation import generate_answers, label_constraint
    from tunelab.evaluate.scoring import match_label
    from tunelab.model.adapters import load_tuned
    from tunelab.rundir import read_jsonl

    config, run_dir = pipeline.load(config_path, overrides, None)
    started = time.perf_counter()
    report = pipeline.prepare(config, run_dir)
    prepared = time.perf_counter()
    pipeline.train(config, run_dir, resume=False)
    trained = time.perf_counter()
    examples = stratified_subset(read_jsonl(run_dir.split("test")), test_rows, 0, "--test-rows", quiet=True)
    labels = known_labels(run_dir, examples)
    model, tokenizer, _ = load_tuned(config, run_dir)
    model.eval()
    generated = generate_answers(model, tokenizer, examples, None, config.evaluate.batch_size, "test",
                                 config.evaluate.decoding, label_constraint(config, tokenizer, labels))
    answers = [match_label(text.strip(), labels) or "" for text in generated]
    gold = [example["label"] for example in examples]
    sample = read_jsonl(run_dir.split("train"))
    return {"sample_rows": len(sample), "pool_rows": report["sample"]["pool"], "test_rows": len(examples),
            "llm": scores(gold, answers), "tfidf": scores(gold, fit_predict(sample, examples)),
            "prepare_s": round(prepared - started), "train_s": round(trained - prepared),
            "score_s": round(time.perf_counter() - trained)}


def full_training_file_baseline(config_path: Path, overrides: list[str], test_rows: int | None) -> dict:
    """TF-IDF + logistic regression on every row of the official training file, same test rows."""
    from tunelab.config import load_config
    from tunelab.data.examples import rows_to_examples
    from tunelab.data.load import load_rows
    from tunelab.data.split import stratified_subset
    from tunelab.evaluate.baseline import fit_predict

    config = load_config(config_path, overrides)
    train = rows_to_examples(load_rows(config.data.source), config.data, config.data.source)
    test = rows_to_examples(load_rows(config.data.test_file), config.data, config.data.test_file)
    test = stratified_subset(test, test_rows, 0, "--test-rows", quiet=True)
    return {"train_rows": len(train), "test_rows": len(test),
            "tfidf": scores([e["label"] for e in test], fit_predict(train, test))}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def print_table(cells: list[dict], full: dict) -> None:
    print("\n| sample (10%) | seeds | learner | strict accuracy | in-scope accuracy | out-of-scope recall | "
          "train wall | score wall |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for strategy in dict.fromkeys(cell["strategy"] for cell in cells):
        done = [cell for cell in cells if cell["strategy"] == strategy]
        seeds = ", ".join(str(cell["seed"]) for cell in done)
        for learner in ("llm", "tfidf"):
            walls = (f"{statistics.mean(c['train_s'] for c in done):.0f} s | "
                     f"{statistics.mean(c['score_s'] for c in done):.0f} s" if learner == "llm" else "| ")
            print(f"| {strategy} ({done[0]['sample_rows']} rows) | {seeds} | "
                  f"{'SmolLM2 + LoRA' if learner == 'llm' else 'TF-IDF + LR'} | "
                  + " | ".join(mean_std([c[learner][key] for c in done])
                               for key in ("accuracy", "in_scope_accuracy", "oos_recall")) + f" | {walls} |")
    print(f"| whole training file ({full['train_rows']} rows) | | TF-IDF + LR | "
          + " | ".join(f"{full['tfidf'][key]:.4f}" for key in ("accuracy", "in_scope_accuracy", "oos_recall"))
          + " | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "clinc150-selection.yaml")
    parser.add_argument("--strategies", nargs="+", default=["kmeans", "stratified", "random"],
                        choices=["kmeans", "stratified", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-rows", type=int, help="score a label-stratified subset (default: every test row)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "selection-llm")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.rundir import read_jsonl

    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "results.jsonl"
    cells = read_jsonl(results) if results.is_file() else []
    settings = {"config": str(args.config), "overrides": args.overrides, "test_rows": args.test_rows}
    for strategy in args.strategies:
        for seed in args.seeds:
            if any(c["strategy"] == strategy and c["seed"] == seed and c["settings"] == settings for c in cells):
                continue
            overrides = [*args.overrides, f"prepare.strategy={strategy}", f"seed={seed}",
                         f"output_dir={args.output / f'{strategy}-{seed}'}"]
            cell = {"strategy": strategy, "seed": seed, "settings": settings,
                    **run_cell(args.config, overrides, args.test_rows)}
            with results.open("a") as appended:
                appended.write(json.dumps(cell) + "\n")
            cells.append(cell)
            print(f"{strategy} seed {seed}: LLM {cell['llm']}, TF-IDF {cell['tfidf']}", flush=True)
    chosen = [c for c in cells if c["settings"] == settings and c["strategy"] in args.strategies]
    print_table(chosen, full_training_file_baseline(args.config, args.overrides, args.test_rows))


if __name__ == "__main__":
    main()

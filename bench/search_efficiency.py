"""Exhaustive grid vs successive halving on the same grid: best metric found and training tokens spent.

Usage: python bench/search_efficiency.py [--csv ../shared/data/symptom2disease.csv] [--sample 0.3]
                                         [--validation 0.15] [--eta 3] [--rungs 3] [--reports 9]
                                         [--tie-margin 0.01] [--learning-rates 1e-4,3e-4,1e-3]
                                         [--strategies grid,halving]

SmolLM2-135M-Instruct with LoRA on a kmeans sample of symptom2disease, a 12-configuration grid
(learning rate × gradient accumulation × LoRA rank), scored by accuracy of generated answers on the
validation split; halving compares trials after 1/27, 1/9 and 1/3 of their training on validation
answer loss (search.intermediate's default) and ranks finished trials on accuracy. Both strategies
run in one invocation on the same prepared data; the numbers are the studies' own records
(training tokens = non-padding tokens the trainer consumed). Each trial is listed: values, state,
accuracy, tokens, where it stopped.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import parser_with_csv
from optuna.trial import TrialState

from tunelab.config import TunelabConfig
from tunelab.data.prepare import prepare_stage
from tunelab.rundir import RunDir
from tunelab.search.study import run_search

SPACE = {
    "train.learning_rate": [1e-4, 3e-4, 1e-3],
    "train.gradient_accumulation_steps": [1, 2],
    "train.lora.r": [8, 16],
}


def settings(csv: str, sample: float, strategy: str, folder: Path, reports: int, eta: int, rungs: int,
             tie_margin: float, validation: float, learning_rates: list[float], eval_examples: int) -> TunelabConfig:
    return TunelabConfig(
        data={"source": csv, "input_column": "text", "label_column": "label", "system_prompt": "Name the diagnosis.",
              "validation_size": validation},
        prepare={"sample": sample},
        model={"name_or_path": "smollm2-135m-instruct"},
        train={"method": "lora", "per_device_batch_size": 8, "epochs": 3, "max_length": 256, "save_steps": 1000,
               "logging_steps": 5},
        evaluate={"max_new_tokens": 12, "batch_size": 32},
        search={"space": {**SPACE, "train.learning_rate": learning_rates}, "strategy": strategy,
                "metric": "accuracy", "eval_examples": eval_examples,
                "reports_per_trial": reports, "reduction_factor": eta, "rungs": rungs, "tie_margin": tie_margin,
                "study_name": strategy},
        output_dir=str(folder),
    )


def main() -> None:
    parser = parser_with_csv(__doc__)
    parser.add_argument("--sample", type=float, default=0.3, help="share of the training pool trained on")
    parser.add_argument("--validation", type=float, default=0.15, help="validation share (final ranking)")
    parser.add_argument("--eta", type=int, default=3, help="halving keeps the best 1/eta at each rung")
    parser.add_argument("--rungs", type=int, default=3, help="halving compares after 1/eta^rungs, ..., 1/eta")
    parser.add_argument("--tie-margin", type=float, default=0.01, help="halving's near-tie rule (0: Optuna's)")
    parser.add_argument("--reports", type=int, default=9, help="evenly spaced intermediate scores per trial")
    parser.add_argument("--learning-rates", default=",".join(map(str, SPACE["train.learning_rate"])),
                        help="comma-separated grid of learning rates (x 2 accumulations x 2 ranks)")
    parser.add_argument("--eval-examples", type=int, default=64,
                        help="validation rows behind each intermediate score (the halving rungs)")
    parser.add_argument("--strategies", default="grid,halving", help="run only some (the comparison needs both)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for strategy in args.strategies.split(","):
            config = settings(args.csv, args.sample, strategy, Path(folder), args.reports, args.eta, args.rungs,
                              args.tie_margin, args.validation, [float(v) for v in args.learning_rates.split(",")],
                              args.eval_examples)
            run_dir = RunDir(folder)
            report = prepare_stage(config, run_dir)
            started = time.perf_counter()
            study = run_search(config, run_dir)
            trials = study.get_trials(deepcopy=False)
            results[strategy] = {
                "best": study.best_value,
                "params": study.best_trial.params,
                "tokens": sum(t.user_attrs.get("training_tokens", 0) for t in trials),
                "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "wall": time.perf_counter() - started,
                "scores": [(t.params, t.value) for t in trials if t.state == TrialState.COMPLETE],
            }
            for trial in trials:
                score = (f"accuracy {trial.value:.4f}" if trial.state == TrialState.COMPLETE else
                         f"last intermediate {trial.value if trial.value is not None else '-'}")
                print(f"  {strategy} #{trial.number} {trial.state.name.lower():8s} {trial.params} {score} "
                      f"tokens {trial.user_attrs.get('training_tokens', 0):,} "
                      f"stopped at {trial.user_attrs.get('pruned_at_examples', 'end')} examples", flush=True)
            print(f"{strategy}: best validation accuracy {study.best_value:.4f} with {study.best_trial.params}; "
                  f"{results[strategy]['complete']} complete, {results[strategy]['pruned']} pruned; "
                  f"{results[strategy]['tokens']:,} training tokens; {results[strategy]['wall']:.0f} s", flush=True)
    print(f"data: {report['sizes']} (train is a kmeans sample of {report['counts']['train_pool']} rows)")
    if set(results) != {"grid", "halving"}:
        return
    grid, halving = results["grid"], results["halving"]
    grid_scores = {tuple(sorted(params.items())): value for params, value in grid["scores"]}
    for params, value in halving["scores"]:
        in_grid = grid_scores[tuple(sorted(params.items()))]
        print(f"  halving finished {params}: accuracy {value:.4f}; the same values in the grid: {in_grid:.4f}"
              f"{'' if abs(value - in_grid) < 1e-9 else ' (training is not reproducible here)'}; "
              f"rank in the grid {1 + sum(v > in_grid for v in grid_scores.values())} of {len(grid_scores)}")
    print(f"halving vs grid: best accuracy {halving['best'] - grid['best']:+.4f} "
          f"(goal: within 0.01), tokens x{halving['tokens'] / grid['tokens']:.2f} (goal: <= 0.33), "
          f"wall time x{halving['wall'] / grid['wall']:.2f}")


if __name__ == "__main__":
    main()

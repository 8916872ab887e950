"""Does the kmeans sample train a better model than a random sample of the same size?

Usage: python bench/selection_quality.py [--csv ../shared/data/symptom2disease.csv] [--seeds 5]

The data goes through tunelab's prepare stage once (dedup, stratified test split, G-means on the
training pool). Then, at 10% and 20% of the training pool, for each seed, a fast proxy learner
(TF-IDF + logistic regression) is trained on the `kmeans` sample and on a `random` sample and
scored on the same test split. A label-stratified random sample is the second baseline: it shows
what the clusters add beyond keeping the label mix. Prints accuracy mean ± std and the
representativeness numbers.
"""

from __future__ import annotations

import statistics

import numpy as np
from common import parser_with_csv

from tunelab.config import TunelabConfig
from tunelab.data.prepare import build_splits
from tunelab.data.represent import representativeness
from tunelab.data.sample import kmeans_sample, random_sample
from tunelab.data.split import stratified_split
from tunelab.evaluate.baseline import fit_predict


def proxy_accuracy(train: list[dict], test: list[dict]) -> float:
    """The baseline every tunelab evaluation reports, as the proxy learner."""
    predicted = np.array(fit_predict(train, test))
    return float(np.mean(predicted == np.array([e["label"] for e in test])))


def stratified_indices(labels: list[str], budget: int, seed: int) -> np.ndarray:
    """Label-stratified random sample: what kmeans must beat to show that clusters add something."""
    rows = [{"label": label, "index": i} for i, label in enumerate(labels)]
    kept, _ = stratified_split(rows, 1 - budget / len(rows), seed)
    return np.array(sorted(row["index"] for row in kept))


def main() -> None:
    parser = parser_with_csv(__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    config = TunelabConfig(data={"source": args.csv, "input_column": "text", "label_column": "label"})
    prepared = build_splits(config)
    pool, test = prepared.splits["train"], prepared.splits["test"]
    labels = [e["label"] for e in pool]
    clusters, space = prepared.pool_clusters, prepared.pool_space
    print(f"pool {len(pool)} rows, test {len(test)} rows, K={prepared.report['clusters']['k']}; "
          f"full pool accuracy {proxy_accuracy(pool, test):.4f}")
    for fraction in (0.1, 0.2):
        budget = round(fraction * len(pool))
        scores: dict[str, list[float]] = {"kmeans": [], "stratified": [], "random": []}
        measures: dict[str, list[dict]] = {name: [] for name in scores}
        for seed in range(args.seeds):
            picks = {
                "kmeans": kmeans_sample(labels, clusters, space, budget, 1, "random", seed),
                "stratified": stratified_indices(labels, budget, seed),
                "random": random_sample(len(pool), budget, seed),
            }
            for name, picked in picks.items():
                scores[name].append(proxy_accuracy([pool[i] for i in picked], test))
                measures[name].append(representativeness(space, labels, clusters, picked, 0, seed))
        for name in scores:
            numbers = {key: statistics.mean(m[key]["sample"] for m in measures[name]) for key in measures[name][0]}
            described = ", ".join(f"{key} {value:.4f}" for key, value in numbers.items())
            print(f"{fraction:.0%} ({budget} rows) {name:>6}: accuracy {statistics.mean(scores[name]):.4f} "
                  f"± {statistics.stdev(scores[name]):.4f} over {args.seeds} seeds; {described}")
        for other in ("random", "stratified"):
            gain = statistics.mean(scores["kmeans"]) - statistics.mean(scores[other])
            print(f"{fraction:.0%}: kmeans - {other} = {gain:+.4f} accuracy ({'kmeans' if gain > 0 else other} wins)")


if __name__ == "__main__":
    main()

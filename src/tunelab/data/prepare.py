"""The prepare stage: rows -> chats -> duplicates out -> split -> clusters -> representative sample.

Test and validation rows are drawn from the whole de-duplicated data before any sampling, and
near-duplicates are removed before splitting, so no near-duplicate group straddles two splits.
Everything is computed in memory first; files are written only once the input proved valid.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.config import TunelabConfig
from tunelab.data.cluster import cluster, silhouette
from tunelab.data.dedup import find_near_duplicates, word_edits
from tunelab.data.examples import rows_to_examples, user_text
from tunelab.data.labels import check_distinct_labels, similar_labels
from tunelab.data.load import load_rows
from tunelab.data.represent import representativeness
from tunelab.data.sample import kmeans_sample, random_sample, sample_size
from tunelab.data.split import (
    check_held_out,
    drop_exact_duplicates,
    label_counts,
    labels_without_rows,
    stratified_split,
)
from tunelab.data.vectorize import vectorize
from tunelab.errors import TunelabError
from tunelab.rundir import RunDir, exclusive, staged_directory, write_json, write_jsonl

SPLITS = ("train", "validation", "test")
SHOWN_PAIRS = 20  # pairs of each kind the report lists
SHOWN_LABELS = 20  # labels named in one error line


@dataclass
class Prepared:
    splits: dict[str, list[dict[str, Any]]]
    duplicates: list[dict[str, Any]]
    report: dict[str, Any]
    pool_space: np.ndarray = field(repr=False)  # the training pool in the clustering space
    pool_clusters: np.ndarray = field(repr=False)
    pool_labels: list = field(repr=False)
    picked: np.ndarray = field(repr=False)  # indices of the training sample within the pool


def input_hash(config: TunelabConfig) -> str:
    """What the prepared files depend on: data and prepare settings, seed, and the data files."""
    files = [config.data.source, config.data.test_file, config.data.validation_file]
    stamps = [(f, _content_digest(Path(f))) for f in files if f and Path(f).is_file()]
    payload = [config.data.model_dump(), config.prepare.model_dump(), config.seed, stamps]
    if config.prepare.vectorizer == "base-model":
        payload.append(config.model.name_or_path)
    return hashlib.sha1(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def _content_digest(path: Path) -> str:
    """By content, not modification time: a data file written again with the same rows is the same input."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_prepared(config: TunelabConfig, run_dir: RunDir) -> bool:
    report = run_dir.data / "prepare_report.json"
    return report.is_file() and json.loads(report.read_text()).get("input_hash") == input_hash(config)


def _load(config: TunelabConfig) -> tuple[list[dict], list[dict] | None, list[dict] | None]:
    """The training rows, and the test and validation files' rows when the config names them."""
    data = config.data
    examples = rows_to_examples(load_rows(data.source, data.hub_split), data, data.source)
    given = []
    for split, path in (("test", data.test_file), ("validation", data.validation_file)):
        rows = rows_to_examples(load_rows(path), data, path) if path else None
        for example in rows or []:
            example["id"] = f"{split}:{example['id']}"
        given.append(rows)
    return examples, *given


def _drop_near_duplicates(rows: list[dict], vectors: np.ndarray, reserved: int,
                          config: TunelabConfig) -> tuple[list[int], list[dict], dict[str, Any]]:
    """Indices to keep, one record per removed row or conflicting pair, and the report's summary.

    The `reserved` leading rows (a given test file) always stay; a training row that is a near copy of
    one of them leaves training. Pairs with different labels stay unless `prepare.dedup_conflicts: drop`.
    """
    prepare = config.prepare
    texts = [user_text(row) for row in rows]
    labels = [row.get("label") for row in rows]
    found = find_near_duplicates(vectors, prepare.dedup_threshold, texts=texts, labels=labels,
                                 word_share=prepare.dedup_word_share, reserved=reserved, seed=config.seed,
                                 merge_conflicts=prepare.dedup_conflicts == "drop")
    gone = {index for index, _, _ in found.removed}

    def record(kind: str, index: int, partner: int, distance: float) -> dict[str, Any]:
        edits, _ = word_edits(texts[index], texts[partner])
        return {"kind": kind, "removed": index in gone, "id": rows[index]["id"], "duplicate_of": rows[partner]["id"],
                "cosine_distance": round(distance, 5), "word_edits": edits, "text": texts[index],
                "kept_text": texts[partner], "label": labels[index], "kept_label": labels[partner]}

    removed = [record("near", *entry) for entry in found.removed]
    conflicts = [record("conflict", *entry) for entry in found.conflicts]
    summary = {
        "threshold": prepare.dedup_threshold, "word_share": prepare.dedup_word_share,
        "vector_candidates": found.candidates, "removed": len(removed),
        "conflicts": len(conflicts), "conflicts_policy": prepare.dedup_conflicts,
        "borderline_removed": sorted(removed, key=lambda r: -r["cosine_distance"])[:SHOWN_PAIRS],
        "conflicting_pairs": sorted(conflicts, key=lambda r: r["cosine_distance"])[:SHOWN_PAIRS],
    }
    kept = [index for index in range(len(rows)) if index not in gone]
    return kept, removed + conflicts, summary


def build_splits(config: TunelabConfig, cache_dir: Path | None = None) -> Prepared:
    """Read and validate all data, then de-duplicate, split, cluster and sample; nothing is written."""
    data, prepare = config.data, config.prepare
    examples, given_test, given_validation = _load(config)
    given = (given_test or []) + (given_validation or [])
    check_distinct_labels((e["label"] for e in examples + given if "label" in e),
                          " + ".join(f for f in (data.source, data.test_file, data.validation_file) if f))
    label_rows = Counter(e["label"] for e in examples + given if "label" in e)
    counts = {"rows_read": len(examples)}
    # Given test and validation rows stay whole; training rows equal (or near) to one of them leave.
    test_rows, exact = drop_exact_duplicates(given_test) if given_test else ([], [])
    validation_rows, exact_validation = (drop_exact_duplicates(given_validation, reserved=test_rows)
                                         if given_validation else ([], []))
    reserved = test_rows + validation_rows
    pool, more_exact = drop_exact_duplicates(examples, reserved=reserved)
    duplicates = [{"kind": "exact", "removed": True, **record} for record in exact + exact_validation + more_exact]
    counts["after_exact_dedup"] = len(pool)
    combined = reserved + pool
    vectors = vectorize([user_text(e) for e in combined], config, cache_dir)
    near_summary = None
    if prepare.dedup_threshold is not None and len(combined) > 1:
        kept, near, near_summary = _drop_near_duplicates(combined, vectors, len(reserved), config)
        duplicates += near
        combined, vectors = [combined[i] for i in kept], vectors[kept]
    pool, pool_vectors = combined[len(reserved):], vectors[len(reserved):]
    counts["after_near_dedup"] = len(pool)
    if len(pool) < 2:
        raise TunelabError(f"{data.source}: only {len(pool)} distinct row(s) left after de-duplication")
    vector_of = {example["id"]: vector for example, vector in zip(pool, pool_vectors, strict=True)}

    distinct, near_removed = len(pool), counts["after_exact_dedup"] - len(pool)
    unheld: dict[str, list[str]] = {}
    if given_test is None:
        split_from = pool
        pool, test_rows = stratified_split(pool, data.test_size, config.seed)
        check_held_out("test", test_rows, data.test_size, distinct, data.source, near_removed)
        _check_training_side(pool, split_from, "data.test_size", data.test_size, data.source)
        unheld["test"] = labels_without_rows(split_from, test_rows, "test", "data.test_size", data.test_size)
    if given_validation is None:
        holdout_share = data.validation_size / (1 - (0 if given_test else data.test_size))
        train_pool, validation = stratified_split(pool, holdout_share, config.seed)
        check_held_out("validation", validation, data.validation_size, distinct, data.source, near_removed)
        _check_training_side(train_pool, pool, "data.validation_size", data.validation_size, data.source)
        if validation:
            unheld["validation"] = labels_without_rows(pool, validation, "validation", "data.validation_size",
                                                       data.validation_size)
    else:
        train_pool, validation = pool, validation_rows
        _check_test_labels(train_pool, validation, data.validation_file, "validation")
    _check_test_labels(train_pool, test_rows, data.test_file or data.source)
    counts["train_pool"] = len(train_pool)

    train_vectors = np.stack([vector_of[e["id"]] for e in train_pool])
    labels = [e.get("label") for e in train_pool]
    k = prepare.k
    if k != "auto" and k > len(train_pool):
        raise TunelabError(f"prepare.k={k} is larger than the {len(train_pool)} training rows")
    clustering = cluster(train_vectors, k, prepare.alpha, prepare.min_cluster_size,
                         min(prepare.k_max, len(train_pool)), prepare.pca_dims, config.seed)
    picked = _sample(config, labels, clustering.labels, clustering.space, train_pool)
    train = [train_pool[i] for i in picked]
    counts["train_sample"] = len(train)

    report: dict[str, Any] = {
        "input_hash": input_hash(config),
        "counts": counts,
        "exact_duplicates_removed": sum(d["kind"] == "exact" for d in duplicates),
        "near_duplicates_removed": sum(d["kind"] == "near" for d in duplicates),
        "exact_duplicates_with_other_label": sum(d["kind"] == "exact" and d["label"] != d["kept_label"]
                                                 for d in duplicates),
        "near_duplicates": near_summary,
        "similar_labels": similar_labels(label_rows),
        "vectorizer": prepare.vectorizer,
        "clusters": {
            "k": clustering.k, "method": clustering.method, "k_per_round": clustering.history,
            "stopped_at_k_max": k == "auto" and clustering.k >= prepare.k_max,
            "sizes": clustering.sizes(),
            "silhouette": silhouette(clustering.space, clustering.labels, config.seed),
        },
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test_rows)},
        # labels a requested held-out share was too small to give a row (many labels, few rows)
        "labels_without_rows": {part: labels for part, labels in unheld.items() if labels},
        "labels": {"pool": label_counts(train_pool), "train": label_counts(train),
                   "validation": label_counts(validation), "test": label_counts(test_rows)},
    }
    if prepare.sample is not None:
        pool_counts = label_counts(train_pool)
        report["sample"] = {"strategy": prepare.strategy, "within_cluster": prepare.within_cluster,
                            "size": len(train), "requested": sample_size(prepare.sample, len(train_pool)),
                            "pool": len(train_pool), "min_per_label": prepare.min_per_label,
                            # bounds that were hit: labels the floor takes whole, rows the floors add
                            "labels_below_floor": sorted(label for label, rows in pool_counts.items()
                                                         if rows < prepare.min_per_label)}
        report["representativeness"] = representativeness(
            clustering.space, labels, clustering.labels, picked, prepare.random_baselines, config.seed)
    return Prepared({"train": train, "validation": validation, "test": test_rows}, duplicates, report,
                    clustering.space, clustering.labels, labels, picked)


def _sample(config: TunelabConfig, labels: list, clusters: np.ndarray, space: np.ndarray,
            pool: list[dict]) -> np.ndarray:
    prepare = config.prepare
    if prepare.sample is None:
        return np.arange(len(pool))
    budget = sample_size(prepare.sample, len(pool))
    if budget > len(pool):
        raise TunelabError(f"prepare.sample={prepare.sample:g} is larger than the {len(pool)} training rows "
                           "left after de-duplication and splitting")
    if prepare.strategy == "random":
        return random_sample(len(pool), budget, config.seed)
    if prepare.strategy == "stratified":
        if budget == len(pool):
            return np.arange(len(pool))
        indexed = [dict(e, _index=i) for i, e in enumerate(pool)]
        kept, _ = stratified_split(indexed, 1 - budget / len(pool), config.seed)
        return np.sort([e["_index"] for e in kept])
    return kmeans_sample(labels, clusters, space, budget, prepare.min_per_label, prepare.within_cluster, config.seed)


def _labels_not_in(train: list[dict], held: list[dict]) -> list[str]:
    seen = {example.get("label") for example in train}
    return sorted({e["label"] for e in held if "label" in e and e["label"] not in seen})


def _named(labels: list[str]) -> str:
    """'a', 'b' and 3 more: the labels an error line names."""
    more = f" and {len(labels) - SHOWN_LABELS} more" if len(labels) > SHOWN_LABELS else ""
    return ", ".join(f"'{label}'" for label in labels[:SHOWN_LABELS]) + more


def _check_test_labels(train: list[dict], test: list[dict], origin: str, split: str = "test") -> None:
    unseen = _labels_not_in(train, test)
    if unseen:
        plural = "s" if len(unseen) > 1 else ""
        raise TunelabError(f"{origin}: {len(unseen)} {split} label{plural} never appear{'' if plural else 's'} in "
                           f"training: {_named(unseen)}")


def _check_training_side(kept: list[dict], pool: list[dict], setting: str, share: float, origin: str) -> None:
    """A held-out share so large that a label keeps no row to train on is an error naming the setting
    (found by test_fuzz: data.validation_size 0.75 of 42 rows ended in scikit-learn's ValueError)."""
    lost = _labels_not_in(kept, pool)
    if lost:
        raise TunelabError(f"{origin}: {setting}={share:g} holds out every row of {len(lost)} label(s), leaving "
                           f"none to train on: {_named(lost)}; lower {setting}")


def duplicates_summary(report: dict[str, Any]) -> str:
    """One sentence on what de-duplication removed and which conflicting pairs it found."""
    text = f"{report['exact_duplicates_removed']} exact and {report['near_duplicates_removed']} near duplicates removed"
    if report.get("exact_duplicates_with_other_label"):
        text += f" ({report['exact_duplicates_with_other_label']} exact ones labelled differently from their twin)"
    near = report.get("near_duplicates")
    if near and near["conflicts"]:
        fate = "both rows kept" if near["conflicts_policy"] == "keep" else "the later row dropped"
        text += f"; {near['conflicts']} near-copy pairs with different labels ({fate})"
    return text


def write_prepared(prepared: Prepared, run_dir: RunDir) -> None:
    from tunelab.plots import plot_cluster_sizes, plot_clusters, plot_labels

    with staged_directory(run_dir.data) as folder:
        for name in SPLITS:
            write_jsonl(folder / f"{name}.jsonl", prepared.splits[name])
        write_jsonl(folder / "duplicates.jsonl", prepared.duplicates)
        write_json(folder / "prepare_report.json", prepared.report)
        plot_clusters(prepared.pool_space, prepared.pool_clusters, prepared.picked, folder / "clusters.png")
        plot_cluster_sizes(prepared.pool_clusters, prepared.picked, folder / "cluster_sizes.png")
        if prepared.pool_labels and prepared.pool_labels[0] is not None:
            plot_labels(prepared.pool_labels, prepared.picked, folder / "labels.png")


def prepare_stage(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    """Run prepare unless data/ already holds its output for these inputs; return the report.

    Under a lock, so the processes of a distributed launch prepare once and the others reuse it.
    """
    with exclusive(run_dir.root / ".prepare.lock"):
        if not is_prepared(config, run_dir):
            write_prepared(build_splits(config, run_dir.root / "cache"), run_dir)
        return json.loads((run_dir.data / "prepare_report.json").read_text())

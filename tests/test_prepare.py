"""The prepare stage: G-means K, near-duplicates, leakage-free splits, representative samples."""

import random
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from conftest import SHARED_CSV, make_label_rows, write_config, write_csv
from tunelab.config import TunelabConfig, load_config
from tunelab.data.cluster import anderson_darling_pvalue, cluster
from tunelab.data.dedup import near_duplicate_groups
from tunelab.data.prepare import build_splits, prepare_stage
from tunelab.data.sample import allocate, kmeans_sample
from tunelab.data.vectorize import tfidf_vectors, vectorize
from tunelab.rundir import RunDir


def test_gmeans_finds_k_on_24_blobs_in_384_dimensions():
    vectors, _ = make_blobs(n_samples=1200, centers=24, n_features=384, random_state=0, center_box=(-10, 10))
    found = cluster(vectors.astype(np.float32), "auto", alpha=1e-4, min_size=8, k_max=64, pca_dims=32, seed=0)
    assert 22 <= found.k <= 26, found.history


def test_gmeans_finds_k_on_low_dimensional_blobs():
    grid = [(x, y) for x in (0, 12, 24) for y in (0, 12, 24)]
    vectors, _ = make_blobs(n_samples=900, centers=grid, cluster_std=1.0, random_state=1)
    found = cluster(vectors, "auto", alpha=1e-4, min_size=8, k_max=64, pca_dims=32, seed=0)
    assert found.k == 9, found.history


def test_anderson_darling_separates_one_gaussian_from_two():
    rng = np.random.default_rng(0)
    assert anderson_darling_pvalue(rng.normal(size=400)) > 0.01
    assert anderson_darling_pvalue(np.concatenate([rng.normal(-3, 1, 200), rng.normal(3, 1, 200)])) < 1e-4


def _edit(text: str, rng: random.Random) -> str:
    """A near-duplicate as users make them: a word replaced or dropped, a typo, or clauses reordered."""
    kind = rng.choice(["replace", "delete", "typo", "reorder"])
    parts = [p for p in re.split(r"(?<=[.,])\s+", text) if p]
    if kind == "reorder" and len(parts) >= 2:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
        return " ".join(parts)
    words = text.split()
    i = rng.randrange(len(words))
    if kind == "delete":
        del words[i]
    elif kind == "typo":
        words[i] = words[i][:-1] if len(words[i]) > 3 else words[i] + "s"
    else:
        words[i] = rng.choice(["really", "very", "quite", "also", "often"])
    return " ".join(words)


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/symptom2disease.csv")
def test_injected_near_duplicates_are_found_with_high_recall_and_precision():
    texts = list(dict.fromkeys(pd.read_csv(SHARED_CSV)["text"]))
    keeper = near_duplicate_groups(tfidf_vectors(texts, 128, 0), 0.02)
    base = [text for index, text in enumerate(texts) if keeper[index] == index]
    rng = random.Random(0)
    sources = rng.sample(range(len(base)), 100)
    corpus = base + [_edit(base[s], rng) for s in sources]
    keeper = near_duplicate_groups(tfidf_vectors(corpus, 128, 0), 0.02)
    flagged = [i for i in range(len(corpus)) if keeper[i] != i]
    found = [i for i in flagged if i >= len(base) and keeper[i] == sources[i - len(base)]]
    assert len(found) / 100 >= 0.9
    assert len(found) / len(flagged) >= 0.95


def _symptom_rows_with_near_duplicates(count: int = 30):
    rows = make_label_rows(per_label=40, seed=3)
    rng = random.Random(5)
    twins = [{"text": _edit(row["text"], rng), "label": row["label"]} for row in rows[:count]]
    return rows + twins, list(zip([r["text"] for r in rows[:count]], [t["text"] for t in twins], strict=True))


def test_no_near_duplicate_group_straddles_two_splits(tmp_path):
    rows, _ = _symptom_rows_with_near_duplicates()
    threshold = 0.3  # one edited word moves these 12-word texts ~0.3 in TF-IDF space
    config = TunelabConfig(data={"source": str(write_csv(tmp_path / "d.csv", rows)), "input_column": "text",
                                 "label_column": "label", "test_size": 0.3, "validation_size": 0.1},
                           prepare={"dedup_threshold": threshold})
    prepared = build_splits(config, cache_dir=tmp_path / "cache")
    assert prepared.report["near_duplicates_removed"] >= 30
    dropped = {record["id"] for record in prepared.duplicates}
    kept = [(name, e) for name, part in prepared.splits.items() for e in part]
    assert not dropped & {e["id"] for _, e in kept} and len(kept) == len({e["id"] for _, e in kept})
    # The vectors prepare compared (cached in the order of the distinct rows) show no pair across splits.
    [cached] = (tmp_path / "cache").glob("vectors-*.npy")
    distinct = list(dict.fromkeys(row["text"] for row in rows))
    vector_of = dict(zip(distinct, np.load(cached), strict=True))
    vectors = np.stack([vector_of[e["messages"][-2]["content"]] for _, e in kept])
    names = np.array([name for name, _ in kept])
    similarity = vectors @ vectors.T
    assert similarity[names[:, None] != names[None, :]].max() < 1 - threshold


def test_kmeans_sample_keeps_every_label_and_same_seed_gives_identical_files(tmp_path, tiny_model_dir):
    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=40))
    outputs = []
    for name in ("a", "b"):
        config = load_config(write_config(tmp_path, {"source": str(csv)}, tiny_model_dir,
                                          prepare={"sample": 0.25, "strategy": "kmeans", "min_per_label": 3}),
                             [f"output_dir={tmp_path / name}"])
        report = prepare_stage(config, RunDir(config.output_dir))
        outputs.append(RunDir(config.output_dir).data)
    train_labels = report["labels"]["train"]
    assert set(train_labels) == set(report["labels"]["pool"]) and min(train_labels.values()) >= 3
    assert report["sizes"]["train"] == report["sample"]["size"] == round(0.25 * report["counts"]["train_pool"])
    assert report["representativeness"]["cluster_coverage"]["sample"] == 1.0
    assert report["clusters"]["k"] >= 2 and report["clusters"]["silhouette"] is not None
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "duplicates.jsonl", "prepare_report.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes()
    for picture in ("clusters.png", "cluster_sizes.png", "labels.png"):
        assert (outputs[0] / picture).stat().st_size > 1000


def test_allocation_is_proportional_with_cluster_and_label_floors():
    cells = [("A", 0), ("A", 1), ("B", 0), ("B", 2)]
    quota = allocate(cells, np.array([80, 10, 8, 2]), budget=10, min_per_label=2)
    assert quota.sum() == 10
    assert quota[2] + quota[3] >= 2  # label B keeps its floor
    assert quota[1] >= 1 and quota[3] >= 1  # clusters 1 and 2 each keep a row
    assert quota[0] == max(quota)


def test_neural_vectorizers_give_unit_vectors_and_are_cached(tmp_path, tiny_model_dir):
    texts = ["I have a fever and chills.", "My skin itches.", "Headache and nausea since Monday."]
    for vectorizer in ("sentence-transformers", "base-model"):
        config = TunelabConfig(data={"source": "x.csv", "input_column": "text", "label_column": "label"},
                               prepare={"vectorizer": vectorizer}, model={"name_or_path": str(tiny_model_dir)})
        vectors = vectorize(texts, config, tmp_path)
        assert vectors.shape[0] == 3 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert np.array_equal(vectorize(texts, config, tmp_path), vectors)
    assert len(list(tmp_path.glob("vectors-*.npy"))) == 2


def test_within_cluster_choices_pick_central_or_spread_rows():
    rng = np.random.default_rng(0)
    space = rng.normal(size=(200, 2))
    clusters, labels = np.zeros(200, dtype=int), ["x"] * 200
    central = kmeans_sample(labels, clusters, space, 10, 1, "centroid", seed=0)
    distance = np.linalg.norm(space - space.mean(axis=0), axis=1)
    assert set(central) == set(np.argsort(distance)[:10])

    def spread(picked):  # smallest distance between two picked rows
        gaps = np.linalg.norm(space[picked][:, None] - space[picked][None, :], axis=2)
        return gaps[np.triu_indices(len(picked), 1)].min()

    spread_random = np.mean([spread(kmeans_sample(labels, clusters, space, 10, 1, "random", seed=s)) for s in range(5)])
    assert spread(kmeans_sample(labels, clusters, space, 10, 1, "k-center", seed=0)) > 2 * spread_random

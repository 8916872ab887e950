"""The prepare stage: G-means K, near-duplicates, leakage-free splits, representative samples."""

import random

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from conftest import SHARED_CSV, make_label_rows, write_config, write_csv
from near_copies import edit_like_a_user
from tunelab.config import TunelabConfig, load_config
from tunelab.data.cluster import anderson_darling_pvalue, cluster
from tunelab.data.dedup import allowed_word_edits, find_near_duplicates, is_near_copy
from tunelab.data.prepare import build_splits, prepare_stage
from tunelab.data.sample import allocate, kmeans_sample
from tunelab.data.vectorize import tfidf_vectors, vectorize
from tunelab.errors import TunelabError
from tunelab.rundir import RunDir


def test_gmeans_finds_k_on_24_blobs_in_384_dimensions():
    vectors, _ = make_blobs(n_samples=1200, centers=24, n_features=384, random_state=0, center_box=(-10, 10))
    found = cluster(vectors.astype(np.float32), "auto", alpha=1e-4, min_size=8, k_max=64, pca_dims=32, seed=0)
    assert 22 <= found.k <= 26, found.history


def prepare_logged(folder, caplog, rows, data=None, **prepare_settings) -> dict:
    """The prepare stage as `tunelab prepare` runs it, its warnings in `caplog`; the report."""
    from tunelab.pipeline import prepare

    csv_path = write_csv(folder / "d.csv", rows)
    run = folder / f"run-{len(list(folder.glob('run-*')))}"
    config = TunelabConfig(data={"source": str(csv_path), "input_column": "text", "label_column": "label",
                                 **(data or {})}, prepare=prepare_settings, output_dir=str(run))
    with caplog.at_level("WARNING", logger="tunelab"):
        return prepare(config, RunDir(config.output_dir))


def test_gmeans_reaching_k_max_is_reported(tmp_path, caplog):
    report = prepare_logged(tmp_path, caplog, make_label_rows(per_label=40), k_max=2, min_cluster_size=2)
    assert report["clusters"]["k"] == 2 and report["clusters"]["stopped_at_k_max"] is True
    assert "G-means stopped at its bound, K = prepare.k_max = 2" in caplog.text


def test_gmeans_finds_k_on_low_dimensional_blobs():
    grid = [(x, y) for x in (0, 12, 24) for y in (0, 12, 24)]
    vectors, _ = make_blobs(n_samples=900, centers=grid, cluster_std=1.0, random_state=1)
    found = cluster(vectors, "auto", alpha=1e-4, min_size=8, k_max=64, pca_dims=32, seed=0)
    assert found.k == 9, found.history


def test_anderson_darling_separates_one_gaussian_from_two():
    rng = np.random.default_rng(0)
    assert anderson_darling_pvalue(rng.normal(size=400)) > 0.01
    assert anderson_darling_pvalue(np.concatenate([rng.normal(-3, 1, 200), rng.normal(3, 1, 200)])) < 1e-4


def _removed(texts: list[str], word_share: float | None = 0.2) -> dict[int, int]:
    """Removed row -> the row it copies, as prepare decides with its defaults (TF-IDF, 0.02, words)."""
    found = find_near_duplicates(tfidf_vectors(texts, 128, 0), 0.02, texts=texts, word_share=word_share)
    return {row: kept for row, kept, _ in found.removed}


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="needs ../shared/data/symptom2disease.csv")
def test_injected_near_duplicates_are_found_with_high_recall_and_precision():
    texts = list(dict.fromkeys(pd.read_csv(SHARED_CSV)["text"]))
    already = _removed(texts)
    base = [text for index, text in enumerate(texts) if index not in already]
    rng = random.Random(0)
    sources = rng.sample(range(len(base)), 100)
    corpus = base + [edit_like_a_user(base[s], rng) for s in sources]
    removed = _removed(corpus)
    found = [i for i, kept in removed.items() if i >= len(base) and kept == sources[i - len(base)]]
    assert len(found) / 100 >= 0.9
    assert len(found) / len(removed) >= 0.95


def _symptom_rows_with_near_duplicates(count: int = 30):
    rows = make_label_rows(per_label=40, seed=3)
    rng = random.Random(5)
    twins = [{"text": edit_like_a_user(row["text"], rng), "label": row["label"]} for row in rows[:count]]
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
    texts = [e["messages"][-2]["content"] for _, e in kept]
    near = np.argwhere((vectors @ vectors.T >= 1 - threshold) & (names[:, None] != names[None, :]))
    assert not [(i, j) for i, j in near if is_near_copy(texts[i], texts[j], 0.2)]


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


def test_a_label_spread_thinly_over_many_clusters_keeps_its_share():
    """CLINC150's `oos` is a few rows in each of many clusters: rounded cell by cell it lost its share
    to the remainders of big single-cluster labels (6 rows of a 10-row share in a 10% sample)."""
    intents = [(label, cluster) for cluster, label in enumerate("ABCDEFGHIJ")]
    spread = [("oos", cluster) for cluster in range(10)]
    quota = allocate(intents + spread, np.array([95] * 10 + [5] * 10), budget=100, min_per_label=1)
    assert quota.sum() == 100
    assert quota[10:].sum() == 5  # 50 of 1,000 rows: 5% of the sample
    assert set(quota[:10]) <= {9, 10}


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


# Short requests in the style of CLINC150: pairs a 128-d TF-IDF puts within 0.02 of each other.
CARD_ROWS = [  # (text, label)
    ("how do i freeze my account?", "freeze_account"),
    ("How do I freeze my account", "deactivate_account"),  # same words, other label: a conflict
    ("how do you convert inches to centimeters", "unit_conversion"),
    ("how do you convert kilos to pounds", "unit_conversion"),  # one of six words differs: distinct
    ("i really need you to find me a hotel with good reviews in phoenix", "book_hotel"),
    ("i need you to find me a hotel with good reviews in phoenix", "book_hotel"),  # one of 14: a copy
]


def _short_text_config(tmp_path, rows, test_rows=None, **prepare):
    data = {"source": str(write_csv(tmp_path / "d.csv", [{"text": t, "label": a} for t, a in rows])),
            "input_column": "text", "label_column": "label", "test_size": 0.25}
    if test_rows:
        data["test_file"] = str(write_csv(tmp_path / "t.csv", [{"text": t, "label": a} for t, a in test_rows]))
    # A loose vector threshold makes every pair above a candidate: the word check and the labels decide.
    return TunelabConfig(data=data, prepare={"dedup_threshold": 0.9, "k": 2, **prepare})


def _filler_rows():
    return [(row["text"], row["label"]) for row in make_label_rows(per_label=8, seed=7)]


def test_short_texts_with_other_labels_are_kept_and_reported_and_a_same_label_copy_is_removed(tmp_path):
    prepared = build_splits(_short_text_config(tmp_path, CARD_ROWS + _filler_rows()), tmp_path / "cache")
    kept = {e["messages"][-2]["content"] for part in prepared.splits.values() for e in part}
    assert {text for text, _ in CARD_ROWS[:5]} <= kept
    assert CARD_ROWS[5][0] not in kept
    near = prepared.report["near_duplicates"]
    assert near["conflicts"] == 1 and near["conflicts_policy"] == "keep"
    [conflict] = near["conflicting_pairs"]
    assert {conflict["label"], conflict["kept_label"]} == {"freeze_account", "deactivate_account"}
    assert conflict["removed"] is False and conflict["word_edits"] == 0
    removed = [d for d in prepared.duplicates if d["removed"]]
    assert all(d["label"] == d["kept_label"] for d in removed)
    assert {(d["text"], d["kept_text"]) for d in removed if d["kind"] == "near"} >= {(CARD_ROWS[5][0], CARD_ROWS[4][0])}
    assert [d["kind"] for d in prepared.duplicates if not d["removed"]] == ["conflict"]


def test_conflicts_drop_removes_the_later_row_of_a_conflicting_pair(tmp_path):
    config = _short_text_config(tmp_path, CARD_ROWS + _filler_rows(), dedup_conflicts="drop")
    prepared = build_splits(config, tmp_path / "cache")
    kept = {e["messages"][-2]["content"] for part in prepared.splits.values() for e in part}
    assert CARD_ROWS[0][0] in kept and CARD_ROWS[1][0] not in kept
    assert prepared.report["near_duplicates"]["conflicts"] == 1


def test_training_rows_equal_to_a_test_row_leave_whatever_their_label_near_conflicts_stay(tmp_path):
    test_rows = [("What is my balance?", "Flu"), ("how do i freeze my account", "Eczema")] + [
        (row["text"], row["label"]) for row in make_label_rows(per_label=3, seed=11)]
    rows = [("what is   my balance?", "Migraine"),  # equal to a test row after case and spaces: leaves
            ("How do I freeze my account!", "Flu")] + _filler_rows()  # a near copy with another label: stays
    prepared = build_splits(_short_text_config(tmp_path, rows, test_rows), tmp_path / "cache")
    pool = {e["messages"][-2]["content"] for name in ("train", "validation") for e in prepared.splits[name]}
    assert "what is   my balance?" not in pool and "How do I freeze my account!" in pool
    [exact] = [d for d in prepared.duplicates if d["kind"] == "exact"]
    assert exact["label"] == "Migraine" and exact["kept_label"] == "Flu"
    assert prepared.report["exact_duplicates_with_other_label"] == 1
    assert prepared.report["near_duplicates"]["conflicts"] == 1


def test_a_row_is_removed_only_for_a_kept_row_within_the_threshold():
    """a ~ b and b ~ c within 0.02, a and c 0.045 apart: b leaves for a, c stays (no chain through b)."""
    angles = np.array([0.0, 0.15, 0.30])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    found = find_near_duplicates(vectors, 0.02)
    assert [(row, kept) for row, kept, _ in found.removed] == [(1, 0)]
    assert all(distance <= 0.02 for _, _, distance in found.removed)


def test_report_page_lists_the_removed_and_the_conflicting_pairs(tmp_path):
    from tunelab.report import write_report

    config = _short_text_config(tmp_path, CARD_ROWS + _filler_rows()).model_copy(
        update={"output_dir": str(tmp_path / "run")})
    prepare_stage(config, RunDir(config.output_dir))
    page = write_report(tmp_path / "run").read_text()
    conflicts = page.split("Near copies with different labels (1, kept)")[1]
    assert "How do I freeze my account" in conflicts and "deactivate_account" in conflicts
    removed = page.split("Removed near duplicates closest to the threshold")[1].split("Near copies with")[0]
    assert CARD_ROWS[5][0] in removed and CARD_ROWS[4][0] in removed


def test_word_check_is_strict_on_short_texts_and_lenient_on_long_paraphrases():
    assert [allowed_word_edits(n, 0.2) for n in (3, 9, 10, 14, 15, 30)] == [0, 0, 1, 1, 2, 5]
    assert is_near_copy("Sorry, no idea", "no idea sorry", 0.2)  # same words: a copy at any length
    assert not is_near_copy("where is my card?", "where is my card accepted?", 0.2)
    long_text = ("I have been feeling fine all day, but suddenly developed a headache, chest pain, and dizziness "
                 "while out for a walk.")
    assert is_near_copy(long_text, long_text.replace("walk", "run").replace("suddenly", "quickly"), 0.2)


def test_a_label_typo_is_reported_with_its_counts_and_a_label_map_merges_it(tmp_path, caplog):
    typo = {"text": "A pounding pain behind my left eye since noon.", "label": "Migrane"}
    rows = make_label_rows(per_label=12) + [typo]
    report = prepare_logged(tmp_path, caplog, rows)
    assert report["similar_labels"] == [{"labels": ["Migrane", "Migraine"], "rows": [1, 12]}]
    assert any("Migrane" in report["labels"][split] for split in ("pool", "test"))
    assert "1 label looks like a typo of another: 'Migrane' (1 rows) ~ 'Migraine' (12 rows)" in caplog.text
    assert "data.label_map, e.g. {'Migrane': 'Migraine'}" in caplog.text
    caplog.clear()
    report = prepare_logged(tmp_path, caplog, rows, data={"label_map": {"Migrane": "Migraine"}})
    assert report["similar_labels"] == [] and "typo" not in caplog.text
    assert not any("Migrane" in report["labels"][split] for split in ("pool", "test"))


def test_labels_equal_once_normalised_name_the_label_map_that_merges_them(tmp_path):
    rows = make_label_rows(per_label=12) + [{"text": "I keep sneezing and my nose runs all day.", "label": "flu."}]
    config = TunelabConfig(data={"source": str(write_csv(tmp_path / "d.csv", rows)), "input_column": "text",
                                 "label_column": "label"}, output_dir=str(tmp_path / "run"))
    with pytest.raises(TunelabError, match="merge them with data.label_map: {'flu.': 'Flu'}"):
        build_splits(config)
    merged = config.model_copy(update={"data": config.data.model_copy(update={"label_map": {"flu.": "Flu"}})})
    assert build_splits(merged).report["labels"]["pool"]["Flu"] >= 9


def test_a_sample_the_floors_push_over_its_budget_and_labels_below_the_floor_are_reported(tmp_path, caplog):
    report = prepare_logged(tmp_path, caplog, make_label_rows(per_label=12), sample=2, min_per_label=20)
    sample = report["sample"]
    assert sample["requested"] == 2 and sample["size"] > 2
    assert sample["labels_below_floor"] == ["Eczema", "Flu", "Migraine"]
    extra = sample["size"] - 2
    assert f"the training sample holds {sample['size']} rows, {extra} more than prepare.sample" in caplog.text
    assert "3 labels have fewer than prepare.min_per_label=20 rows in the pool (all taken): Eczema, Flu" in caplog.text


def test_a_validation_file_is_the_validation_split_and_its_rows_leave_training(tmp_path):
    rows = make_label_rows(per_label=14)
    validation = [dict(row) for row in rows[:6]]  # also in the training file: they must leave training
    config = TunelabConfig(data={"source": str(write_csv(tmp_path / "d.csv", rows)),
                                 "validation_file": str(write_csv(tmp_path / "v.csv", validation)),
                                 "input_column": "text", "label_column": "label", "validation_size": 0.5},
                           prepare={"dedup_threshold": None}, output_dir=str(tmp_path / "run"))
    prepared = build_splits(config)
    assert [e["messages"][-2]["content"] for e in prepared.splits["validation"]] == [r["text"] for r in validation]
    trained = {e["messages"][-2]["content"] for e in prepared.splits["train"] + prepared.splits["test"]}
    assert not trained & {r["text"] for r in validation}
    assert len(prepared.splits["train"]) + len(prepared.splits["test"]) == len(rows) - 6
    unseen = config.model_copy(update={"data": config.data.model_copy(update={
        "validation_file": str(write_csv(tmp_path / "u.csv", [{"text": "My toe is swollen.", "label": "Gout"}]))})})
    with pytest.raises(TunelabError, match="u.csv: 1 validation label never appears in training: 'Gout'"):
        build_splits(unseen)

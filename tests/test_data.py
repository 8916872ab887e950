"""Loading tables, mapping columns to chats, de-duplication and the leakage-free split."""

import json
from collections import Counter

import pandas as pd
import pytest

from conftest import SHARED_CSV, make_label_rows, write_csv
from tunelab.config import DataConfig, TunelabConfig
from tunelab.data.examples import rows_to_examples
from tunelab.data.load import load_rows
from tunelab.data.prepare import build_splits
from tunelab.data.split import normalized_key
from tunelab.errors import TunelabError


def data_config(source, **extra) -> DataConfig:
    return DataConfig(source=str(source), input_column="text", label_column="label", **extra)


def test_csv_jsonl_and_parquet_load_the_same_rows(tmp_path):
    rows = make_label_rows(per_label=3)
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.jsonl", "d.parquet"):
        assert load_rows(str(tmp_path / name)) == rows


def test_unicode_line_separators_inside_a_jsonl_text_stay_in_the_row(tmp_path):
    """Found by test_fuzz: JSON writes U+2028, U+0085 or a form feed raw inside a string, and the loader
    split lines on them too, so a valid file read as "not valid JSON" (CRLF line ends still work)."""
    rows = [{"text": "fever\u2028and chills\x85for days\x0c", "label": "Flu"},
            {"text": "itchy skin", "label": "Eczema"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows),
                                      encoding="utf-8", newline="")
    assert load_rows(str(tmp_path / "d.jsonl")) == rows


def test_rows_become_chats_with_the_system_prompt(tmp_path):
    rows = [{"text": " I sneeze a lot. ", "label": "Allergy"}]
    [example] = rows_to_examples(rows, data_config("x.csv", system_prompt="Diagnose."), "x.csv")
    assert example["messages"] == [
        {"role": "system", "content": "Diagnose."},
        {"role": "user", "content": "I sneeze a lot."},
        {"role": "assistant", "content": "Allergy"},
    ]
    assert example["label"] == "Allergy"


def test_messages_column_is_kept_and_gets_the_system_prompt():
    config = DataConfig(source="x.jsonl", messages_column="chat", system_prompt="Be brief.")
    rows = [{"chat": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    [example] = rows_to_examples(rows, config, "x.jsonl")
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(TunelabError, match="row 1: the last message must be the assistant's answer"):
        rows_to_examples([{"chat": [{"role": "user", "content": "Hi"}]}], config, "x.jsonl")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "a", "diagnosis": "b"}], "x.csv: no column 'label' (columns: text, diagnosis)"),
        ([{"text": "a", "label": "b"}, {"text": "c", "label": "  "}], "x.csv: row 2: 'label' is empty"),
        ([{"text": None, "label": "b"}], "x.csv: row 1: 'text' is missing"),
        ([{"text": ["a"], "label": "b"}], "x.csv: row 1: 'text' is not text (list)"),
    ],
)
def test_bad_rows_name_the_row_and_column(rows, message):
    with pytest.raises(TunelabError) as error:
        rows_to_examples(rows, data_config("x.csv"), "x.csv")
    assert str(error.value) == message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TunelabError, match="data file not found"):
        load_rows(str(tmp_path / "none.csv"))
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(TunelabError, match="empty.csv: the dataset is empty"):
        load_rows(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(TunelabError, match="bad.jsonl: line 2: not valid JSON"):
        load_rows(str(tmp_path / "bad.jsonl"))


def test_split_is_stratified_duplicate_free_and_reproducible(tmp_path):
    rows = make_label_rows(per_label=20)
    rows += [{"text": rows[0]["text"].upper() + "  ", "label": rows[0]["label"]}, dict(rows[5])]
    path = write_csv(tmp_path / "d.csv", rows)
    config = TunelabConfig(data=data_config(path, test_size=0.25, validation_size=0.1),
                           prepare={"dedup_threshold": None})
    first = build_splits(config)
    splits = first.splits
    assert first.report["exact_duplicates_removed"] == 2
    keys = {name: {normalized_key(e) for e in part} for name, part in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    assert sum(map(len, splits.values())) == 60
    assert Counter(e["label"] for e in splits["test"]) == {"Flu": 5, "Migraine": 5, "Eczema": 5}
    assert [e["id"] for e in build_splits(config).splits["test"]] == [e["id"] for e in splits["test"]]


def test_real_dataset_split_has_no_text_in_two_splits():
    if not SHARED_CSV.exists():
        pytest.skip("../shared/data/symptom2disease.csv not present")
    config = TunelabConfig(data=data_config(SHARED_CSV))
    prepared = build_splits(config)
    splits = prepared.splits
    assert prepared.report["counts"]["rows_read"] == 1200
    assert prepared.report["exact_duplicates_removed"] == 47
    assert prepared.report["near_duplicates_removed"] > 0  # paraphrases differing by a word or two
    assert sum(d["kind"] == "near" for d in prepared.duplicates) == prepared.report["near_duplicates_removed"]
    train_texts = {e["messages"][-2]["content"].lower() for e in splits["train"]}
    assert not any(e["messages"][-2]["content"].lower() in train_texts for e in splits["test"])
    assert len(set(e["label"] for e in splits["test"])) == 24


def test_separate_test_file_removes_its_twins_from_training(tmp_path):
    rows = make_label_rows(per_label=6)
    train_path = write_csv(tmp_path / "train.csv", rows)
    test_path = write_csv(tmp_path / "test.csv", rows[:4])
    splits = build_splits(TunelabConfig(data=data_config(train_path, test_file=str(test_path)))).splits
    assert len(splits["test"]) == 4 and len(splits["train"]) == len(rows) - 4


def test_test_label_unseen_in_training_is_an_error(tmp_path):
    rows = make_label_rows(per_label=4)
    train_path = write_csv(tmp_path / "train.csv", rows)
    test_path = write_csv(tmp_path / "test.csv", [{"text": "brand new text", "label": "Gout"}])
    with pytest.raises(TunelabError, match="1 test label never appears in training: 'Gout'$"):
        build_splits(TunelabConfig(data=data_config(train_path, test_file=str(test_path))))
    many = [{"text": f"new text number {i}", "label": f"Label{i:02d}"} for i in range(23)]
    write_csv(test_path, many)
    with pytest.raises(TunelabError, match="23 test labels never appear in training: 'Label00', .*'Label19' and 3 "):
        build_splits(TunelabConfig(data=data_config(train_path, test_file=str(test_path))))


def test_a_dataset_is_named_from_the_config_or_by_a_file_name_that_says_something():
    from tunelab.data.load import dataset_name

    assert dataset_name("../shared/data/clinc150/train.csv") == "clinc150"
    assert dataset_name("data/symptom2disease.csv") == "symptom2disease"
    assert dataset_name("../shared/data/clinc150/train.csv", "CLINC150 intents") == "CLINC150 intents"
    assert dataset_name("owner/hub-dataset") == "owner/hub-dataset"


def _many_label_rows(rows_per_label: dict[str, int]) -> list[dict[str, str]]:
    return [{"text": f"case {i} of {label}: symptom number {i * 7 + len(label)}", "label": label}
            for label, n in rows_per_label.items() for i in range(n)]


def test_150_labels_keep_the_requested_test_size_and_name_the_untested_labels(tmp_path, caplog):
    """300 rows x 0.1 is 30 test rows: not one per label (150, half the data), each label within one row
    of its share, and the 120 labels left without a test row named."""
    labels = {f"intent_{n:03d}": 2 for n in range(150)}
    path = write_csv(tmp_path / "d.csv", _many_label_rows(labels))
    config = TunelabConfig(data=data_config(path, test_size=0.1), prepare={"dedup_threshold": None})
    with caplog.at_level("WARNING"):
        prepared = build_splits(config)
    test, train = prepared.splits["test"], prepared.splits["train"]
    assert len(test) == 30 and len(train) == 270
    assert max(Counter(e["label"] for e in test).values()) == 1
    assert {e["label"] for e in train} == set(labels)  # no label lost its last training row
    untested = prepared.report["labels_without_rows"]["test"]
    assert len(untested) == 120 and set(untested) == set(labels) - {e["label"] for e in test}
    assert "120 of 150 labels have no test row" in caplog.text and "data.test_size to 0.50" in caplog.text


def test_labels_with_one_or_two_rows_are_split_without_losing_training_rows(tmp_path):
    counts = {**{f"common{n}": 12 for n in range(10)}, **{f"pair{n}": 2 for n in range(5)},
              **{f"single{n}": 1 for n in range(5)}}
    path = write_csv(tmp_path / "d.csv", _many_label_rows(counts))
    config = TunelabConfig(data=data_config(path, test_size=0.2, validation_size=0.1),
                           prepare={"dedup_threshold": None})
    splits = build_splits(config).splits
    splittable = sum(n for n in counts.values() if n > 1)
    assert len(splits["test"]) == round(splittable * 0.2)  # requested size, singletons excluded
    trained = Counter(e["label"] for e in splits["train"])
    assert set(trained) == set(counts)  # every label, the one-row ones included, is trained on
    for part in ("test", "validation"):
        assert not {e["label"] for e in splits[part]} & {f"single{n}" for n in range(5)}
    for label, n in Counter(e["label"] for e in splits["test"]).items():
        assert abs(n - counts[label] * 0.2) <= 1, label


def test_a_held_out_share_that_leaves_a_label_nothing_to_train_on_names_the_setting(tmp_path):
    """Found by test_fuzz: data.validation_size 0.75 ended in scikit-learn's ValueError (train_size 2 is
    under 3 classes); with that fixed, the error blamed test labels rather than the share."""
    path = write_csv(tmp_path / "d.csv", _many_label_rows({"a": 10, "b": 10, "c": 4}))
    with pytest.raises(TunelabError, match=r"d.csv: data.validation_size=0.75 holds out every row of 2 label\(s\), "
                                           r"leaving none to train on: 'a', 'c'; lower data.validation_size"):
        build_splits(TunelabConfig(data=data_config(path, validation_size=0.75), prepare={"dedup_threshold": None}))
    splits = build_splits(TunelabConfig(data=data_config(path, validation_size=0.5),
                                        prepare={"dedup_threshold": None})).splits
    assert {e["label"] for e in splits["train"]} == {"a", "b", "c"}


def test_a_share_under_one_row_still_holds_one_out_and_one_row_labels_cannot(tmp_path):
    path = write_csv(tmp_path / "d.csv", _many_label_rows({"a": 10, "b": 10}))
    config = TunelabConfig(data=data_config(path, test_size=0.02), prepare={"dedup_threshold": None})
    assert len(build_splits(config).splits["test"]) == 1  # 0.02 x 20 rows rounds to none: one, not an error
    path = write_csv(tmp_path / "d.csv", _many_label_rows({label: 1 for label in "abcdef"}))
    with pytest.raises(TunelabError, match=r"leave the test split \(0.2\) empty: add rows \(a held-out split "
                                           r"takes rows of labels with 2 or more"):
        build_splits(TunelabConfig(data=data_config(path), prepare={"dedup_threshold": None}))

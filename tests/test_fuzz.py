"""Property-based fuzzing (Hypothesis): no data file or config ever produces a traceback.

Every generated case runs the real command. It either succeeds with a coherent result (non-empty
splits, every tested label trained on, counts that add up, no lock or temporary folder left) or
exits 2 with one line that names the file, row or key, and leaves no run directory behind.

The budget is fixed and derandomized in `make test` (≥ 300 cases in all); set
TUNELAB_FUZZ_EXAMPLES=N for N cases per property (e.g. 2000 before a release).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from typer.testing import CliRunner

from conftest import make_label_rows
from tunelab.cli import app
from tunelab.rundir import read_jsonl

BUDGET = int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "0"))
KEYS_IN_ERRORS = ("data.", "prepare.", "train.", "search.", "evaluate.", "model.", "publish.", "row ", "line ",
                  "unknown key", "--set", "'seed'", "'output_dir'")


def fuzz_settings(default_examples: int):
    return settings(max_examples=BUDGET or default_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


GOOD_ROWS = make_label_rows(per_label=14, seed=1)
ODD_TEXTS = ["😀🤒🤧", "مرحبا، عندي صداع", "שלום, יש לי חום", "a", "I", "!!!", "\x00nul\x00 byte", "line\r\nbreak",
             "\ufeffstarts with a BOM", "tab\tinside", "x" * 3000, "fever " * 400, "Ünïcödé façade", "１２３",
             "I have had fever, chills and body aches for 3 days.", "   padded   ", "\u200b", "\\N", "NaN", "null"]
texts = st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=30),
                  st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
labels = st.one_of(st.sampled_from(["Flu", "Migraine", "Eczema", "flu.", "FLU", "Cold", "Cold sore", ""]),
                   st.integers(-2, 3), st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8))


@st.composite
def datasets(draw):
    """Rows that are mostly realistic with fuzzed ones mixed in, and sometimes only fuzz, in any layout."""
    size = draw(st.sampled_from([0, 1, 2, 3, 5, 12, 40, 40, 60, 60]))
    odd_percent = draw(st.sampled_from([0, 0, 5, 20, 60]))  # clean files too: success must be coherent
    rows = []
    for _ in range(size):
        kind = "good" if draw(st.integers(0, 99)) >= odd_percent else draw(st.sampled_from(
            ["odd text", "odd text", "odd label", "twin", "twin", "extra column", "missing column"]))
        row = dict(GOOD_ROWS[draw(st.integers(0, len(GOOD_ROWS) - 1))])
        if kind == "odd text":
            row["text"] = draw(texts)
        elif kind == "odd label":
            row["label"] = draw(labels)
        elif kind == "twin" and rows:  # a copy or near copy of an earlier row
            row = dict(rows[draw(st.integers(0, len(rows) - 1))])
            row["text"] = str(row.get("text", "")) + draw(st.sampled_from(["", ".", " today", "!"]))
        elif kind == "extra column":
            row["notes"] = draw(texts)
        elif kind == "missing column":
            row.pop(draw(st.sampled_from(["text", "label"])))
        rows.append(row)
    if draw(st.integers(0, 4)) == 0 and rows:  # every text the same, or nearly
        base = rows[0].get("text", "same")
        for row in rows:
            row["text"] = f"{base}{draw(st.sampled_from(['', ' ', '.']))}"
    return rows, draw(st.sampled_from(["csv", "csv", "tsv", "jsonl", "jsonl", "json", "parquet"])), draw(
        st.sampled_from(["plain", "plain", "plain", "bom", "crlf", "duplicate column", "nested"]))


def write_dataset(folder: Path, rows: list[dict], layout: str, quirk: str) -> Path | None:
    """The rows as a file; None when the format cannot hold them (the fuzzer moves on)."""
    path = folder / f"data.{layout}"
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["text", "label"]
    if layout in ("csv", "tsv"):
        header = columns + (["text"] if quirk == "duplicate column" else [])
        with open(path, "w", newline="", encoding="utf-8-sig" if quirk == "bom" else "utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t" if layout == "tsv" else ",",
                                lineterminator="\r\n" if quirk == "crlf" else "\n")
            writer.writerow(header)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else str(row.get(c)) for c in columns]
                                + (["dup"] if quirk == "duplicate column" else []))
    elif layout == "jsonl":
        lines = [json.dumps({**row, "nested": {"a": [1, 2]}} if quirk == "nested" else row) for row in rows]
        path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    elif layout == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        import pandas as pd

        frame = pd.DataFrame(rows, columns=columns)
        if quirk == "nested":
            frame["nested"] = [[1, 2]] * len(frame)
        try:
            frame.to_parquet(path)
        except Exception:  # mixed types pyarrow will not store: not a file a user could have
            return None
    return path


def write_config(folder: Path, data_file: Path, **sections) -> Path:
    config = {
        "data": {"source": str(data_file), "input_column": "text", "label_column": "label",
                 "validation_size": 0.1, **sections.pop("data", {})},
        "prepare": {"vectorizer": "tfidf", **sections.pop("prepare", {})},
        "output_dir": str(folder / "run"),
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def record(outcome: str) -> None:
    """Which outcomes the fuzzer reached (`pytest --hypothesis-show-statistics`)."""
    if currently_in_test_context():
        event(outcome)


def check_outcome(result, folder: Path, data_file: Path) -> None:
    """The contract: success with coherent files, or exit 2 with one naming line and no run directory."""
    run = folder / "run"
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output[-2000:]}\n{result.exception!r}"
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        # Log lines of the work done before the problem showed may come first; then one error line (with
        # the other bad rows indented below it when several rows are bad).
        starts = [index for index, line in enumerate(lines) if line.startswith("error: ")]
        assert len(starts) == 1, result.output
        error = lines[starts[0]]
        assert all(line.startswith(("INFO ", "WARNING ")) for line in lines[:starts[0]]), result.output
        assert all(line.startswith("  ") for line in lines[starts[0] + 1:]), result.output
        assert data_file.name in error or any(key in error for key in KEYS_IN_ERRORS), error
        # A diverged training keeps its checkpoints on purpose, a search whose every trial failed its
        # trials.csv (the error points there).
        kept_on_purpose = "training loss" in error or "no trial completed" in error
        assert kept_on_purpose or not run.exists(), "a failed command must not leave a run directory"
        reason = re.sub(r"\d+", "N", error.split(": ", 2)[-1])[:50]
        record(f"exit 2: {reason}")
        return
    record("exit 0")
    splits = {name: read_jsonl(run / "data" / f"{name}.jsonl") for name in ("train", "validation", "test")}
    assert splits["train"] and splits["test"], {name: len(rows) for name, rows in splits.items()}
    trained = {row["label"] for row in splits["train"]}
    assert {row["label"] for row in splits["test"] + splits["validation"]} <= trained
    report = json.loads((run / "data" / "prepare_report.json").read_text())
    assert report["sizes"] == {name: len(rows) for name, rows in splits.items()}
    leftovers = [p.name for p in run.rglob(".*")]
    assert not leftovers, f"lock or temporary files left: {leftovers}"


@fuzz_settings(260)
@given(dataset=datasets())
def test_any_data_file_prepares_or_fails_with_one_line(dataset):
    rows, layout, quirk = dataset
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data_file = write_dataset(folder, rows, layout, quirk)
        if data_file is None:
            return
        result = CliRunner().invoke(app, ["prepare", str(write_config(folder, data_file))])
        check_outcome(result, folder, data_file)


bounds = st.one_of(st.integers(-2, 3), st.floats(-1.5, 2.5), st.just(10**12), st.none(), st.text(max_size=5),
                   st.booleans())
SETTINGS = ["data.test_size", "data.validation_size", "prepare.sample", "prepare.k", "prepare.k_max",
            "prepare.min_cluster_size", "prepare.pca_dims", "prepare.dedup_threshold", "prepare.dedup_word_share",
            "prepare.min_per_label", "prepare.tfidf_dims", "prepare.alpha", "prepare.strategy", "seed",
            "prepare.not_a_setting"]


@fuzz_settings(60)
@given(values=st.dictionaries(st.sampled_from(SETTINGS), bounds, min_size=1, max_size=3),
       as_override=st.booleans())
def test_any_prepare_setting_prepares_or_fails_with_one_line(values, as_override):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data_file = folder / "data.csv"
        shutil.copy(GOOD_DATA, data_file)
        if as_override:
            overrides = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
            result = CliRunner().invoke(app, ["prepare", str(write_config(folder, data_file)), *overrides])
        else:
            sections: dict = {}
            for dotted, value in values.items():
                section, key = dotted.split(".", 1) if "." in dotted else ("", dotted)
                if section:
                    sections.setdefault(section, {})[key] = value
                else:
                    sections[key] = value
            result = CliRunner().invoke(app, ["prepare", str(write_config(folder, data_file, **sections))])
        check_outcome(result, folder, data_file)


GOOD_DATA = Path(tempfile.mkdtemp(prefix="tunelab-fuzz-")) / "good.csv"
with open(GOOD_DATA, "w", newline="", encoding="utf-8") as _handle:
    _writer = csv.DictWriter(_handle, fieldnames=["text", "label"])
    _writer.writeheader()
    _writer.writerows(GOOD_ROWS)


SPACES = st.one_of(
    st.just({"train.learning_rate": [1e-3, 1e-2]}), st.just({"train.lora.r": [2, 4]}),
    st.just({"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}), st.just({}),
    st.just({"train.learning_rate": []}), st.just({"train.not_a_key": [1]}),
    st.just({"train.epochs": ["many"]}), st.just({"train.learning_rate": {"low": 1e-3, "high": 1e-4}}),
    st.dictionaries(st.sampled_from(["train.learning_rate", "train.lora.r", "train.max_length"]),
                    st.lists(bounds, min_size=1, max_size=2), min_size=1, max_size=1))


EDGES = {  # values at the edges of what is valid, beside the out-of-bounds ones of `bounds`
    "max_length": [1, 2, 8, 24, 10**6], "per_device_batch_size": [1, 3, 1000], "learning_rate": [1e-9, 1.0],
    "epochs": [0.01, 2], "method": ["full", "lora", "dora"], "warmup_ratio": [0, 0.99, 5],
    "gradient_accumulation_steps": [1, 64], "lora": [{"r": 0}, {"r": 1, "alpha": 1}, {"target_modules": ["nope"]}],
}
TRAIN_SETTINGS = st.dictionaries(st.sampled_from(sorted(EDGES)), st.none(), max_size=2).flatmap(
    lambda keys: st.fixed_dictionaries({key: st.one_of(st.sampled_from(EDGES[key]), st.sampled_from(EDGES[key]),
                                                        st.sampled_from(EDGES[key]), bounds) for key in keys}))


def train_or_search(command: str, model_dir: Path, train: dict, search: dict | None = None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data_file = folder / "data.csv"
        shutil.copy(GOOD_DATA, data_file)
        config = write_config(
            folder, data_file, model={"name_or_path": str(model_dir)},
            train={"max_steps": 1, "per_device_batch_size": 8, "num_threads": 1, "save_steps": 100, **train},
            evaluate={"max_new_tokens": 4, "compare_base": False, "max_examples": 4},
            search={**search, "reports_per_trial": 1, "rungs": 1, "eval_examples": 4} if search else {})
        check_outcome(CliRunner().invoke(app, [command, str(config)]), folder, data_file)


@fuzz_settings(16)
@given(train=TRAIN_SETTINGS)
def test_any_training_setting_trains_or_fails_with_one_line(tiny_model_dir, train):
    train_or_search("train", tiny_model_dir, train)


@fuzz_settings(12)
@given(train=TRAIN_SETTINGS, search=st.fixed_dictionaries({
    "space": SPACES, "strategy": st.sampled_from(["grid", "tpe", "halving", "grid", "tpe", "annealing"]),
    "n_trials": st.sampled_from([1, 2, 2, 0]),
    "metric": st.sampled_from(["auto", "loss", "accuracy", "loss", "bleu"])}))
def test_any_search_setting_searches_or_fails_with_one_line(tiny_model_dir, train, search):
    train_or_search("search", tiny_model_dir, train, search)


def near_copies() -> list[dict]:
    """Twelve rows: for each of three labels, one long text and three copies changing one word."""
    bases = {"Flu": "I have had a high fever, strong chills and aching muscles for {} days now",
             "Migraine": "I keep getting a throbbing headache on one side with nausea for {} days now",
             "Eczema": "My skin has been itchy, dry and cracked on both elbows for {} days now"}
    return [{"text": text.format(days), "label": label} for label, text in bases.items() for days in (2, 3, 4, 5)]


# Each input a fuzzer (or a user, for the first two) found to end in a traceback or an incoherent run.
FINDINGS = {
    "a single data row": ([{"text": "I have a fever.", "label": "Flu"}], "csv", {},
                          "only 1 distinct row(s) left after de-duplication"),
    "twelve near-identical rows": (near_copies(), "csv", {},
                                   "set prepare.dedup_threshold: null (near-duplicate removal took 9 rows)"),
    "texts without a word of two letters": (
        [{"text": text, "label": label} for text, label in [("😀🤒", "Flu"), ("🤧", "Flu"), ("😵‍💫", "Migraine"),
                                                            ("🤕", "Migraine"), ("!", "Flu"), ("?", "Migraine")] * 2],
        "jsonl", {"data": {"validation_size": 0}, "prepare": {"dedup_threshold": None}}, None),
    "a handful of rows whose vectors span one dimension": (
        [GOOD_ROWS[0]] * 3 + [{"text": "😀🤒🤧", "label": GOOD_ROWS[0]["label"]}, GOOD_ROWS[1]], "csv", {},
        None),
    "a JSON file that is not valid JSON": ("{oops", "json", {}, "data.json: line 1: not valid JSON"),
    "a JSONL row without the text column": (
        [*GOOD_ROWS[:5], {"label": "Flu"}], "jsonl", {}, "data.jsonl: row 6: 'text' is missing"),
    "yes/no labels": ([{"text": row["text"], "label": index % 2 == 0} for index, row in enumerate(GOOD_ROWS)],
                      "jsonl", {}, None),
    "zero clusters": (GOOD_ROWS, "csv", {"prepare": {"k": 0}}, "'prepare.k': Input should be greater than 0"),
    "a seed numpy cannot take": (GOOD_ROWS, "csv", {"seed": 10**12}, "'seed': Input should be less than"),
    "held-out shares that leave nothing to train on": (
        GOOD_ROWS, "csv", {"data": {"test_size": 0.6, "validation_size": 0.5}},
        "data.test_size + data.validation_size = 1.1 leaves no rows to train on"),
}


@pytest.mark.parametrize("finding", list(FINDINGS))
def test_fuzz_finding(finding):
    rows, layout, sections, expected = FINDINGS[finding]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if isinstance(rows, str):
            data_file = folder / f"data.{layout}"
            data_file.write_text(rows)
        else:
            data_file = write_dataset(folder, rows, layout, "plain")
        result = CliRunner().invoke(app, ["prepare", str(write_config(folder, data_file, **sections))])
        check_outcome(result, folder, data_file)
        if expected is None:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 2 and expected in result.output, result.output


def test_fuzz_finding_an_override_that_is_not_yaml():
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        result = CliRunner().invoke(app, ["prepare", str(write_config(folder, GOOD_DATA)), "--set",
                                          "data.test_size=\x1b"])
        assert result.exit_code == 2 and "--set data.test_size: the value is not valid YAML" in result.output


def test_fuzz_finding_a_batch_larger_than_the_data_trains(tiny_model_dir):
    train_or_search("train", tiny_model_dir, {"per_device_batch_size": 10**12})

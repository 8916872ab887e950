"""The data stage as `tunelab train` needs it: rows -> chat examples -> dedup -> split -> files."""

from __future__ import annotations

from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.examples import rows_to_examples
from tunelab.data.load import load_rows
from tunelab.data.split import drop_exact_duplicates, label_counts, stratified_split
from tunelab.errors import TunelabError
from tunelab.rundir import RunDir, staged_directory, write_json, write_jsonl

SPLITS = ("train", "validation", "test")


def build_splits(config: TunelabConfig) -> dict[str, Any]:
    """Read and validate all data, then split; nothing is written, so bad input leaves no trace."""
    data = config.data
    examples = rows_to_examples(load_rows(data.source, data.hub_split), data, data.source)
    if data.test_file:
        test, test_duplicates = drop_exact_duplicates(
            rows_to_examples(load_rows(data.test_file), data, data.test_file)
        )
        pool, duplicates = drop_exact_duplicates(examples, reserved=test)
        duplicates += test_duplicates
    else:
        pool, duplicates = drop_exact_duplicates(examples)
        pool, test = stratified_split(pool, data.test_size, config.seed)
    validation_share = data.validation_size / (1 - (0 if data.test_file else data.test_size))
    train, validation = stratified_split(pool, validation_share, config.seed)
    if data.max_rows and len(train) > data.max_rows:
        train, _ = stratified_split(train, 1 - data.max_rows / len(train), config.seed)
    if not train:
        raise TunelabError(f"{data.source}: no training rows left after de-duplication and splitting")
    _check_test_labels(train, test, data.test_file or data.source)
    splits = {"train": train, "validation": validation, "test": test}
    report = {
        "rows_read": len(examples),
        "exact_duplicates_removed": len(duplicates),
        "sizes": {name: len(rows) for name, rows in splits.items()},
        "labels": {name: label_counts(rows) for name, rows in splits.items()},
    }
    return {"splits": splits, "duplicates": duplicates, "report": report}


def _check_test_labels(train: list[dict], test: list[dict], origin: str) -> None:
    seen = {example.get("label") for example in train}
    unseen = sorted({e["label"] for e in test if "label" in e and e["label"] not in seen})
    if unseen:
        raise TunelabError(f"{origin}: test label '{unseen[0]}' never appears in training ({len(unseen)} such)")


def write_splits(prepared: dict[str, Any], run_dir: RunDir) -> None:
    with staged_directory(run_dir.data) as folder:
        for name in SPLITS:
            write_jsonl(folder / f"{name}.jsonl", prepared["splits"][name])
        write_jsonl(folder / "duplicates.jsonl", prepared["duplicates"])
        write_json(folder / "prepare_report.json", prepared["report"])

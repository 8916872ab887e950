"""Read a user's table (CSV, JSONL, JSON, Parquet or a Hub dataset) into a list of row dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


GENERIC_STEMS = {"train", "test", "validation", "valid", "dev", "data", "dataset", "all", "full"}


def dataset_name(source: str, name: str | None = None) -> str:
    """`name` when given; else a file's stem, or its folder's name when the stem says nothing
    ("clinc150" for clinc150/train.csv); a Hub id as it is."""
    if name:
        return name
    path = Path(source)
    if not path.suffix:
        return source
    return path.parent.name if path.stem.lower() in GENERIC_STEMS and path.parent.name else path.stem


def load_rows(source: str, hub_split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local file, or of a Hub dataset when `source` is not a local path."""
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise TunelabError(f"data file not found: {source}")
        rows = _load_file(path)
    else:
        rows = _load_hub(source, hub_split)
    if not rows:
        raise TunelabError(f"{source}: the dataset is empty")
    return rows


def _load_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        try:
            payload = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise TunelabError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(payload, list) or not all(isinstance(row, dict) for row in payload):
            raise TunelabError(f"{path}: expected a JSON list of objects")
        return payload
    import pandas as pd

    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            text = _read_text(path)
            if not text.strip():
                return []
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise TunelabError(f"{path}: cannot read ({exc})") from None
    duplicated = [str(name) for name in frame.columns if "." in str(name) and str(name).rsplit(".", 1)[0]
                  in frame.columns and str(name).rsplit(".", 1)[1].isdigit()]
    if duplicated:
        raise TunelabError(f"{path}: duplicate column name '{duplicated[0].rsplit('.', 1)[0]}'")
    return frame.to_dict(orient="records")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TunelabError(f"{path}: line {line}: bytes that are not UTF-8") from None


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: U+2028 is text
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunelabError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TunelabError(f"{path}: line {number}: expected a JSON object")
        rows.append(row)
    return rows


def _load_hub(dataset_id: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # the datasets library raises many types for a missing/offline id
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TunelabError(f"cannot load dataset '{dataset_id}' (not a local file; Hub: {message})") from None
    return dataset.to_list()

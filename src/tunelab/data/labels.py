"""What makes two answers the same label: case, inner white space and surrounding punctuation do not.

Scoring compares answers to labels under this one normalisation, so two labels that become equal
under it ("Flu" and "flu.") could never be told apart: that is a data error, caught before training.
Labels one typo apart ("Translate" and "transalte") are reported with their row counts; either kind
is merged with `data.label_map`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from typing import Any

from tunelab.errors import TunelabError
from tunelab.rundir import RunDir, read_jsonl

_SPACE = re.compile(r"\s+")
_EDGE_PUNCTUATION = string.punctuation + " \n\t"


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip(_EDGE_PUNCTUATION)


def check_distinct_labels(labels: Iterable[str], origin: str) -> None:
    """One line naming both labels when two of them normalise to the same answer."""
    seen: dict[str, str] = {}
    for label in sorted(set(labels)):
        other = seen.setdefault(normalize(label), label)
        if other != label:
            raise TunelabError(f"{origin}: labels '{other}' and '{label}' are the same answer once case, spaces and "
                               f"surrounding punctuation are ignored; merge them with data.label_map: "
                               f"{{'{label}': '{other}'}}")


def typo_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap of neighbours) between two strings (optimal string alignment)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if previous2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def similar_labels(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Pairs of labels one typo apart once normalised (two in labels of 12 characters or more) where one
    is rare next to the other (at most 5 rows or a tenth of its rows; "time" and "timer" with 150 rows
    each are two classes), rarer first, with row counts: likely one class spelled twice."""
    names = sorted(counts)
    keys = {name: normalize(name) for name in names}
    pairs = []
    for index, first in enumerate(names):
        for second in names[index + 1:]:
            a, b = keys[first], keys[second]
            allowed = 2 if min(len(a), len(b)) >= 12 else 1
            if min(len(a), len(b)) < 4 or abs(len(a) - len(b)) > allowed:
                continue
            rare, common = sorted((first, second), key=lambda name: (counts[name], name))
            if counts[rare] <= max(5, counts[common] / 10) and typo_distance(a, b) <= allowed:
                pairs.append({"labels": [rare, common], "rows": [counts[rare], counts[common]]})
    return sorted(pairs, key=lambda pair: pair["rows"][0])


LABELS_FILE = "labels.json"  # a served copy of a run (a container) carries its labels instead of its data


def known_labels(run_dir: RunDir, examples: list[dict[str, Any]]) -> list[str]:
    """Labels seen in training (the model's vocabulary of answers) plus any in the scored data; a copy
    without data/ reads them from labels.json."""
    if run_dir.split("train").exists():
        train = read_jsonl(run_dir.split("train"))
    elif (run_dir.root / LABELS_FILE).is_file():
        train = [{"label": label} for label in json.loads((run_dir.root / LABELS_FILE).read_text())]
    else:
        train = []
    return sorted({e["label"] for e in train + examples if "label" in e})

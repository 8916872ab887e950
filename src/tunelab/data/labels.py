"""What makes two answers the same label: case, inner white space and surrounding punctuation do not.

Scoring compares answers to labels under this one normalisation, so two labels that become equal
under it ("Flu" and "flu.") could never be told apart: that is a data error, caught before training.
"""

from __future__ import annotations

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
                               "surrounding punctuation are ignored; merge them in the data")


def known_labels(run_dir: RunDir, examples: list[dict[str, Any]]) -> list[str]:
    """Labels seen in training (the model's vocabulary of answers) plus any in the scored data."""
    train = read_jsonl(run_dir.split("train")) if run_dir.split("train").exists() else []
    return sorted({e["label"] for e in train + examples if "label" in e})

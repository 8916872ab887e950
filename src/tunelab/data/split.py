"""Exact de-duplication, the stratified train/validation/test split, and the minimum data it needs.

Duplicates are removed *before* splitting, so the same text can never be in both train and test;
the split is stratified by label with a fixed seed so every label is tested in proportion.

Minimum data, checked before any training: at least 2 distinct rows after de-duplication; a
held-out split (test unless `data.test_file` is given, validation when `data.validation_size` > 0)
takes at least one row of each label that has two or more, so it needs such a label and more of
those rows than labels; a label with a single row is only trained on. Search needs the validation
split; the TF-IDF baseline and vectors need nothing more (texts without words fall back to
character n-grams).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from tunelab.data.examples import prompt_messages, user_text
from tunelab.errors import TunelabError

_SPACE = re.compile(r"\s+")
log = logging.getLogger(__name__)


def normalized_key(example: dict[str, Any]) -> str:
    """Hash of the prompt with case and white space folded: what makes two rows 'the same text'."""
    text = "\n".join(m["content"] for m in prompt_messages(example))
    return hashlib.sha1(_SPACE.sub(" ", text).strip().lower().encode()).hexdigest()


def drop_exact_duplicates(
    examples: list[dict[str, Any]], reserved: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep the first of each group of equal prompts; also drop rows equal to a `reserved` one.

    Returns the kept rows and, for each dropped row, a record naming the kept twin.
    """
    first_seen = {normalized_key(example): example for example in reserved or []}
    kept, dropped = [], []
    for example in examples:
        key = normalized_key(example)
        twin = first_seen.setdefault(key, example)
        if twin is example:
            kept.append(example)
        else:
            dropped.append({"id": example["id"], "duplicate_of": twin["id"], "text": user_text(example),
                            "kept_text": user_text(twin), "label": example.get("label"),
                            "kept_label": twin.get("label")})
    return kept, dropped


def stratified_split(
    examples: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split off `fraction` of the rows, stratified by label when rows have labels.

    Labels with a single row cannot be in both parts; they stay on the first (training) side.
    """
    if not examples or fraction <= 0:
        return list(examples), []
    labels = [example.get("label") for example in examples]
    if labels[0] is None:
        return _as_lists(train_test_split(examples, test_size=fraction, random_state=seed))
    counts = Counter(labels)
    splittable = [example for example in examples if counts[example["label"]] > 1]
    singletons = [example for example in examples if counts[example["label"]] == 1]
    n_held = max(round(len(splittable) * fraction), len(set(e["label"] for e in splittable)))
    if n_held >= len(splittable):
        return list(examples), []
    kept, held = train_test_split(
        splittable, test_size=n_held, random_state=seed, stratify=[e["label"] for e in splittable]
    )
    return list(kept) + singletons, list(held)


def check_held_out(part: str, held: list[dict[str, Any]], fraction: float, pool: int, origin: str,
                   near_removed: int) -> None:
    """A held-out split that came out empty is an error that says what to add or change."""
    if held or fraction <= 0:
        return
    hints = ["add rows (a held-out split needs a label with 2 or more rows, and more such rows than labels)"]
    if near_removed:
        hints.append(f"set prepare.dedup_threshold: null (near-duplicate removal took {near_removed} rows)")
    if part == "validation":
        hints.append("set data.validation_size: 0")
    raise TunelabError(f"{origin}: the {pool} distinct rows left after de-duplication leave the {part} split "
                       f"({fraction:g}) empty: {', or '.join(hints)}")


def stratified_subset(examples: list[dict[str, Any]], limit: int | None, seed: int, setting: str,
                      quiet: bool = False) -> list[dict[str, Any]]:
    """At most `limit` rows, drawn stratified by label with a fixed seed: never the first rows of a
    file that may be sorted by label. The draw and the labels it leaves out are logged, naming the
    `setting` that bounds it (unless `quiet`)."""
    if not limit or limit >= len(examples):
        return examples
    # Systematic stratified draw: the k-th of a label's n shuffled rows gets the key (k + u) / n, so
    # taking the smallest keys gives each label its share of the rows, to within one.
    rng = np.random.default_rng(seed)
    by_label: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.get("label"), []).append(index)
    keys = np.empty(len(examples))
    for rows in by_label.values():
        order = rng.permutation(len(rows))
        keys[np.array(rows)[order]] = (np.arange(len(rows)) + rng.random()) / len(rows)
    subset = [examples[i] for i in sorted(np.argsort(keys, kind="stable")[:limit])]
    if quiet:
        return subset
    log.info("scoring a label-stratified subset of %d of %d rows (%s, seed %d)", len(subset), len(examples),
             setting, seed)
    missing = sorted({e["label"] for e in examples if "label" in e} - {e["label"] for e in subset if "label" in e})
    if missing:
        log.warning("%d label%s not in the scored subset (raise %s to cover them): %s%s", len(missing),
                    " is" if len(missing) == 1 else "s are", setting, ", ".join(missing[:20]),
                    " ..." if len(missing) > 20 else "")
    return subset


def _as_lists(parts: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return list(parts[0]), list(parts[1])


def label_counts(examples: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(e["label"] for e in examples if "label" in e).items()))

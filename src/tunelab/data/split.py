"""Exact de-duplication, the stratified train/validation/test split, and the minimum data it needs.

Duplicates are removed *before* splitting, so the same text can never be in both train and test;
the split is stratified by label with a fixed seed so every label is tested in proportion.

Minimum data, checked before any training: at least 2 distinct rows after de-duplication; a
held-out split (test unless `data.test_file` is given, validation when `data.validation_size` > 0)
has the requested size, round(rows x share) and at least one row, never enlarged to a row per
label: each label gets its share to within one row, drawn from labels with two or more rows (a
label with a single row is only trained on, and no label loses its last training row). A split
that comes out empty stops the run with what to change; labels left without a held-out row (many
labels, few rows) are named in a warning and the prepare report. Search needs the validation
split; the TF-IDF baseline and vectors need nothing more (texts without words fall back to
character n-grams).
"""

from __future__ import annotations

import hashlib
import logging
import math
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
    """Split off round(`fraction` x rows) rows (at least one), stratified by label when rows have labels.

    Labels with a single row cannot be in both parts; they stay on the first (training) side. With at
    least one row per label on each side, scikit-learn's stratified split draws them; with fewer (many
    labels, a small share, or a share near all the rows) a systematic stratified draw keeps the
    requested size, each label within one row of its share.
    """
    if not examples or fraction <= 0:
        return list(examples), []
    labels = [example.get("label") for example in examples]
    if labels[0] is None:
        return _as_lists(train_test_split(examples, test_size=fraction, random_state=seed))
    counts = Counter(labels)
    splittable = [example for example in examples if counts[example["label"]] > 1]
    singletons = [example for example in examples if counts[example["label"]] == 1]
    n_held = max(round(len(splittable) * fraction), 1)  # a share under one row still holds one out
    if n_held >= len(splittable):
        return list(examples), []
    if min(n_held, len(splittable) - n_held) >= len({e["label"] for e in splittable}):
        kept, held = train_test_split(
            splittable, test_size=n_held, random_state=seed, stratify=[e["label"] for e in splittable]
        )
        return list(kept) + singletons, list(held)
    chosen = set(_stratified_order(splittable, seed)[:n_held].tolist())
    kept = [e for i, e in enumerate(splittable) if i not in chosen]
    return kept + singletons, [e for i, e in enumerate(splittable) if i in chosen]


def labels_without_rows(pool: list[dict[str, Any]], held: list[dict[str, Any]], part: str, setting: str,
                        share: float) -> list[str]:
    """Labels of the pool that the held-out `part` has no row of, logged with what would cover them."""
    missing = sorted({e["label"] for e in pool if "label" in e} - {e["label"] for e in held if "label" in e})
    if missing and held:
        labels = len({e["label"] for e in pool})
        log.warning("%d of %d labels have no %s row (%s=%g of %d rows is %d rows), so their %s scores are not "
                    "measured: %s%s. Raise %s to %.2f or more to cover every label, or give an own %s file",
                    len(missing), labels, part, setting, share, len(pool), len(held), part,
                    ", ".join(missing[:10]), " ..." if len(missing) > 10 else "", setting,
                    math.ceil(100 * labels / len(pool)) / 100, part)
    return missing


def check_held_out(part: str, held: list[dict[str, Any]], fraction: float, pool: int, origin: str,
                   near_removed: int) -> None:
    """A held-out split that came out empty is an error that says what to add or change."""
    if held or fraction <= 0:
        return
    hints = ["add rows (a held-out split takes rows of labels with 2 or more, and leaves each label one to train on)"]
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
    order = _stratified_order(examples, seed)
    subset = [examples[i] for i in sorted(order[:limit])]
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


def _stratified_order(examples: list[dict[str, Any]], seed: int) -> np.ndarray:
    """Row indices in a systematic stratified order: the k-th of a label's n shuffled rows gets the key
    (k + u) / n, so any prefix of the order gives each label its share of the rows, to within one
    (and, for a prefix under half the rows, never all of a label's rows)."""
    rng = np.random.default_rng(seed)
    by_label: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.get("label"), []).append(index)
    keys = np.empty(len(examples))
    for rows in by_label.values():
        order = rng.permutation(len(rows))
        keys[np.array(rows)[order]] = (np.arange(len(rows)) + rng.random()) / len(rows)
    return np.argsort(keys, kind="stable")


def _as_lists(parts: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return list(parts[0]), list(parts[1])


def label_counts(examples: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(e["label"] for e in examples if "label" in e).items()))

"""Near-duplicates: candidates from the vectors, confirmed on the words, never across labels.

Candidates are pairs whose cosine distance is within the threshold, found without an n x n matrix:
rows are compared in chunks within blocks (one block up to `BLOCK_ROWS` rows, else blocks from a
coarse k-means partition; near-duplicates are nearly always in the same coarse cluster).

Vectors alone are not enough on short texts: TF-IDF reduced to a few dimensions puts "where is my
card?" and "where is my card accepted?" almost on top of each other. So a candidate counts as a
near copy only when few of the texts' words differ, relative to their length (`allowed_word_edits`:
none in a text under 10 words, one in 10-14, ...). Two rows with different labels are never merged:
such a pair is a *conflict* (label noise or a deliberate contrast), reported, not removed.

A row is removed only for a kept row it is itself a near copy of (no chains through a removed row),
so every removed row is within the threshold of the row that stays in its place.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BLOCK_ROWS = 20_000
CHUNK_ROWS = 1_024
_WORD = re.compile(r"\w+")


def _blocks(vectors: np.ndarray, seed: int) -> list[np.ndarray]:
    n = len(vectors)
    if n <= BLOCK_ROWS:
        return [np.arange(n)]
    from sklearn.cluster import MiniBatchKMeans

    parts = int(np.ceil(n / (BLOCK_ROWS / 4)))
    assignment = MiniBatchKMeans(n_clusters=parts, random_state=seed, n_init=1, batch_size=4096).fit_predict(vectors)
    return [np.flatnonzero(assignment == part) for part in range(parts)]


def near_duplicate_pairs(vectors: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of unit vectors whose cosine distance is at most `threshold`."""
    rows, cols = [], []
    for block in _blocks(vectors, seed):
        block_vectors = vectors[block]
        for start in range(0, len(block), CHUNK_ROWS):
            similarity = block_vectors[start:start + CHUNK_ROWS] @ block_vectors.T
            i, j = np.nonzero(similarity >= 1.0 - threshold)
            i += start
            keep = i < j
            rows.append(block[i[keep]])
            cols.append(block[j[keep]])
    if not rows:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    return np.concatenate(rows), np.concatenate(cols)


def word_edits(first: str, second: str) -> tuple[int, int]:
    """(words to change, words in the longer text), on lower-cased words, order ignored.

    Words to change is the larger one-sided difference of the two word multisets: a replaced,
    added or dropped word, or a typo, counts 1; reordered clauses count 0.
    """
    a, b = Counter(_WORD.findall(first.lower())), Counter(_WORD.findall(second.lower()))
    return max((a - b).total(), (b - a).total()), max(a.total(), b.total())


def allowed_word_edits(length: int, word_share: float) -> int:
    """Words a near copy of a `length`-word text may change: one less than `word_share` of them.

    The "one less" keeps short texts strict: with 0.2, no word under 10 words, one in 10-14, two in
    15-19, five in 30; so two distinct short requests are never merged, long paraphrases are.
    """
    return max(0, math.floor(word_share * length + 1e-9) - 1)


def is_near_copy(first: str, second: str, word_share: float) -> bool:
    """Whether two texts differ in few enough words to be copies of each other (see allowed_word_edits)."""
    edits, length = word_edits(first, second)
    return edits <= allowed_word_edits(length, word_share)


@dataclass
class NearDuplicates:
    """What near-duplicate search decided, as (row, partner, cosine distance) triples."""

    removed: list[tuple[int, int, float]] = field(default_factory=list)  # (removed row, kept row it copies, ...)
    conflicts: list[tuple[int, int, float]] = field(default_factory=list)  # near copies with different labels
    candidates: int = 0  # pairs within the vector threshold, before the word check


def find_near_duplicates(vectors: np.ndarray, threshold: float, *, texts: Sequence[str] | None = None,
                         labels: Sequence | None = None, word_share: float | None = None,
                         merge_conflicts: bool = False, reserved: int = 0, seed: int = 0) -> NearDuplicates:
    """Decide which rows leave as near copies of an earlier row, and which pairs conflict.

    Without `texts`/`word_share` the vectors alone decide; without `labels` every pair may merge.
    The first `reserved` rows (a given test file) always stay. Conflicting pairs (different labels)
    stay too unless `merge_conflicts`, which treats them as ordinary near copies.
    """
    first, second = near_duplicate_pairs(vectors, threshold, seed)
    result = NearDuplicates(candidates=len(first))
    distance = 1.0 - np.einsum("ij,ij->i", vectors[first], vectors[second]) if len(first) else np.empty(0)
    order = np.lexsort((distance, second))  # by the later row, closest partner first
    removed = np.zeros(len(vectors), dtype=bool)
    for k in order:
        i, j, gap = int(first[k]), int(second[k]), max(float(distance[k]), 0.0)
        if texts is not None and word_share is not None and not is_near_copy(texts[i], texts[j], word_share):
            continue
        if labels is not None and labels[i] != labels[j]:
            result.conflicts.append((j, i, gap))
            if not merge_conflicts:
                continue
        if j >= reserved and not removed[j] and not removed[i]:
            removed[j] = True
            result.removed.append((j, i, gap))
    return result

"""Near copies as users make them, for the tests and for bench/dedup_quality.py."""

from __future__ import annotations

import random
import re


def edit_like_a_user(text: str, rng: random.Random) -> str:
    """A near-duplicate as users make them: a word replaced or dropped, a typo, or clauses reordered."""
    kind = rng.choice(["replace", "delete", "typo", "reorder"])
    parts = [p for p in re.split(r"(?<=[.,])\s+", text) if p]
    if kind == "reorder" and len(parts) >= 2:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
        return " ".join(parts)
    words = text.split()
    i = rng.randrange(len(words))
    if kind == "delete":
        del words[i]
    elif kind == "typo":
        words[i] = words[i][:-1] if len(words[i]) > 3 else words[i] + "s"
    else:
        words[i] = rng.choice(["really", "very", "quite", "also", "often"])
    return " ".join(words)

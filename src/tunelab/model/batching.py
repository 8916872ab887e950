"""Batches without wasted compute: padding-free packing and the answer-only LM head.

Short instruction examples padded to the longest one in a batch waste compute on pad tokens, and
the LM head (hidden → vocabulary, ~20% of a small model's FLOPs) plus the softmax run at every
prompt position although only answer tokens carry loss. Both are removed here without changing
what is learned: packed rows give each example its own position_ids (0, 1, …), from which
transformers keeps examples apart, so no token sees another example; the loss is the same
cross-entropy over the same answer tokens, normalised the same way.

How transformers reads position_ids depends on the attention backend: eager/SDPA/flex build a
block-diagonal mask for any number of rows, while FlashAttention reads packed sequences from
position_ids only when the batch is a single row (`_is_packed_sequence`); two packed rows there
would attend across examples. So under FlashAttention a batch becomes one row (TRL's
`padding_free`), which its varlen kernel runs at the cost of the separate sequences.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100  # the label cross-entropy skips: prompt tokens and padding


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows whose total length stays within `capacity` (longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(max(capacity, lengths[index]) - lengths[index])
    return rows


def _packed_rows(lengths: list[int], limit: int) -> list[list[int]]:
    """The packing with the fewest token slots (rows x longest row) for row lengths up to `limit`.

    Longer rows are not better in themselves: attention over a row costs the square of its
    length, so among equal slot counts the shortest rows win.
    """
    longest = max(lengths)
    candidates = [_first_fit_decreasing(lengths, capacity) for capacity in range(longest, max(limit, longest) + 1, 8)]

    def slots(rows: list[list[int]]) -> int:
        return len(rows) * max(sum(lengths[i] for i in row) for row in rows)

    return min(candidates, key=slots)


def packs_into_one_row(attn_implementation: str | None) -> bool:
    """Whether packed batches must be one row for this attention backend to keep examples apart:
    FlashAttention (2, 3 or a hub kernel) reads position_ids as sequence boundaries in one row only."""
    return "flash" in (attn_implementation or "")


@dataclass
class BatchCollator:
    """Right-padded batches, or (``pack_row_tokens`` set) the batch's examples packed into short rows.

    Rows are short (at most ``pack_row_tokens``) rather than one long row per batch: with a mask,
    attention over a packed row costs the square of its length, so one 1,700-token row is slower
    than padding. ``one_row`` (FlashAttention, see `packs_into_one_row`) puts the whole batch in one
    row instead: its varlen kernel costs only the separate sequences. Packed batches carry
    ``position_ids`` and an ``attention_mask`` that marks padding only; the trainer drops the mask
    before the forward pass so the position_ids define the attention.
    """

    pad_token_id: int
    pack_row_tokens: int | None = None
    one_row: bool = False

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.pack_row_tokens and self.one_row:
            sequences = [self._packed_row(features)]
        elif self.pack_row_tokens:
            rows = _packed_rows([len(f["input_ids"]) for f in features], self.pack_row_tokens)
            sequences = [self._packed_row([features[i] for i in row]) for row in rows]
        else:
            sequences = [(list(f["input_ids"]), list(f["labels"]), None) for f in features]
        width = max(len(ids) for ids, _, _ in sequences)
        batch = {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids, _, _ in sequences]),
            "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels, _ in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in sequences]),
        }
        if self.pack_row_tokens:
            # Padding continues as a sequence of its own, so it never joins a real example's block.
            batch["position_ids"] = torch.tensor(
                [positions + list(range(width - len(positions))) for _, _, positions in sequences])
        return batch

    @staticmethod
    def _packed_row(features: list[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for feature in features:
            ids += feature["input_ids"]
            # Unpacked, an example's first token is never a target; packed, it would be the target
            # of the previous example's last token.
            labels += [IGNORE_INDEX, *feature["labels"][1:]]
            positions += range(len(feature["input_ids"]))
        return ids, labels, positions


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """What the model's forward gets: packed rows lose the attention mask, so transformers builds the
    block-diagonal mask from position_ids (it does so only without a mask and without a KV cache)."""
    if "position_ids" in inputs:
        return {**{key: value for key, value in inputs.items() if key != "attention_mask"}, "use_cache": False}
    return inputs


def _accepts_logits_to_keep(model) -> bool:
    """Whether the model takes `logits_to_keep` as a boolean mask: transformers' causal LMs do since they
    slice with `slice_logits_to_keep` (transformers 5.2x); older releases and remote-code models would
    read the mask as positions (or not take it), so they get full logits and the mask applied after."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_slices_with_a_mask(type(base).forward)


@functools.cache
def _forward_slices_with_a_mask(forward) -> bool:
    """Per model class, not per training step: reading a signature is slow next to a cached lookup."""
    function = inspect.unwrap(forward)
    return ("logits_to_keep" in inspect.signature(function).parameters
            and "slice_logits_to_keep" in getattr(function, "__globals__", {}))


def answer_token_losses(model, inputs: dict[str, torch.Tensor],
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of the answer tokens and their count, with the LM head applied at those
    positions only (`label_smoothing`: training's softened targets; scoring keeps the plain loss).

    Position t predicts token t+1, so the head runs where labels[t+1] is supervised
    (`logits_to_keep` as a boolean mask: transformers projects just those hidden states).
    """
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    forward = {"use_cache": False, **{key: value for key, value in model_inputs(inputs).items() if key != "labels"}}
    logits = model(**forward, logits_to_keep=keep).logits if _accepts_logits_to_keep(model) else model(
        **forward).logits
    if logits.dim() == 3:  # a model without `logits_to_keep` (or ignoring it): same loss from full logits
        logits = logits[keep]
    total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                              targets[targets != IGNORE_INDEX], reduction="sum",
                                              label_smoothing=label_smoothing)
    return total, keep.sum()


def answer_only_loss(model, inputs: dict[str, torch.Tensor], num_items_in_batch=None,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of `answer_token_losses`, normalised like transformers' causal-LM loss: by
    `num_items_in_batch` (all supervised tokens of the accumulated batch) when the trainer gives it,
    else by this batch's supervised tokens."""
    total, count = answer_token_losses(model, inputs, label_smoothing)
    if num_items_in_batch is not None:
        count = num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)

"""Exact resume: crash-safe checkpoints and a batch order that does not depend on the process history.

A checkpoint is either complete under its final name or not there at all.

transformers writes `checkpoint-N` in place and resumes from the highest number even when a crash
left it half-written. Here the Trainer writes each checkpoint into a staging folder on the same
filesystem; the files are flushed, a COMPLETE marker is written, and only then is the folder renamed
to `checkpoint-N`. Resume takes the newest complete checkpoint and reports what it ignores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from tunelab.rundir import permissions_of_a_normal_write

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
STAGING = ".staging"
_NUMBERED = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone.

    transformers' sampler draws from the global RNG, whose state at an epoch start differs between
    an uninterrupted run and one resumed mid-epoch: the resumed run would see other batches.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class AtomicCheckpointTrainer(Trainer):
    """A Trainer that resumes exactly: atomic checkpoints and a reproducible batch order.

    Checkpoints are written to a staging folder, flushed, marked and renamed.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset["length"],
            self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def _save_checkpoint(self, model, trial) -> None:
        """Every process writes its part into the staging folder; the main process publishes it."""
        final_root = Path(self._get_output_dir(trial=trial))
        staging_root = final_root / STAGING
        main = self.args.should_save
        if main:
            shutil.rmtree(staging_root, ignore_errors=True)
            staging_root.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir, real_output_dir = str(staging_root), self.args.output_dir
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_output_dir
        self.accelerator.wait_for_everyone()
        if main:
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staged = staging_root / name
            (staged / COMPLETE_MARKER).write_text(f"step {self.state.global_step}\n")
            permissions_of_a_normal_write(staged)
            _fsync_tree(staged)
            target = final_root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(output_dir=str(final_root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with its COMPLETE marker; incomplete ones are reported and removed."""
    if not folder.is_dir():
        return None
    staging = folder / STAGING
    for leftover in sorted(staging.glob("*")) if staging.is_dir() else []:
        log.warning("ignoring %s: the process stopped while saving it", leftover.name)
    shutil.rmtree(staging, ignore_errors=True)
    complete = []
    for path in folder.iterdir():
        match = _NUMBERED.match(path.name)
        if not match or not path.is_dir():
            continue
        if (path / COMPLETE_MARKER).is_file():
            complete.append((int(match.group(1)), path))
        else:
            log.warning("ignoring %s: it has no %s marker (incomplete)", path.name, COMPLETE_MARKER)
            shutil.rmtree(path)
    return max(complete)[1] if complete else None


def finished_checkpoint(checkpoint: Path) -> bool:
    """True when the checkpoint was saved at the last step: training has nothing left to do."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    return state["global_step"] >= state["max_steps"] > 0

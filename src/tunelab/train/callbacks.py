"""What the training loop reports to us: the log file, the divergence watchdog, the progress display."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from tunelab.errors import TunelabError
from tunelab.progress import progress_bar


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log record (loss, lr, grad norm, epoch, step) to train_log.jsonl, from the
    main process only (under `accelerate launch` every process sees every record)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")


class TrainingDiverged(TunelabError):
    """The loss became NaN, infinite or exploded: training cannot recover from there."""

    keeps_run_dir = True  # the checkpoints before the divergence are worth keeping


class LossWatchdog(TrainerCallback):
    """Stops training at a non-finite or exploding loss, naming the step and the likely cause.

    Exploding: more than `EXPLOSION_FACTOR` times the first logged loss, which fine-tuning from a
    pretrained model never legitimately reaches.
    """

    EXPLOSION_FACTOR = 4.0

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate
        self.first_loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        exploded = self.first_loss is not None and loss > self.EXPLOSION_FACTOR * self.first_loss
        if not math.isfinite(loss) or exploded:
            what = f"exploded to {loss:.4g} (from {self.first_loss:.4g})" if exploded else f"became {loss}"
            raise TrainingDiverged(
                f"training loss {what} at step {state.global_step}: the learning rate "
                f"({self.learning_rate:g}) is probably too high; the last good checkpoint is kept"
            )


class TrainingProgress(TrainerCallback):
    """One progress display for training, like the other stages': steps done, the latest loss,
    learning rate and validation loss, elapsed time and ETA (a logged line every 30 s when stderr is
    not a terminal). It replaces transformers' tqdm bar and its printed metric dicts."""

    def __init__(self):
        self.progress = None
        self.task = None
        self.latest: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = progress_bar()
            self.progress.start()
            self.task = self.progress.add_task("training", total=state.max_steps, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.latest |= {key: value for key, value in (logs or {}).items()
                        if key in ("loss", "learning_rate", "eval_loss")}
        if self.progress is not None:
            self.progress.update(self.task, description=self.describe())

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None and state.global_step < state.max_steps:  # the last step: after its log
            self.progress.update(self.task, completed=state.global_step)

    def describe(self) -> str:
        parts = ["training"]
        if "loss" in self.latest:
            parts.append(f"loss {self.latest['loss']:.4f}")
        if "learning_rate" in self.latest:
            parts.append(f"lr {self.latest['learning_rate']:.2e}")
        if "eval_loss" in self.latest:
            parts.append(f"validation loss {self.latest['eval_loss']:.4f}")
        return ", ".join(parts)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.stop()

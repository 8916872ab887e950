"""What a search shows while it runs: one progress display over its trials, and a line per trial.

The display counts trials in units of training done: trial n of N, the running trial's share of its
steps, elapsed time and an ETA over the whole search (a logged line every 30 s when stderr is not a
terminal). Each trial's outcome is logged when it ends: its validation score and the best so far,
where it was pruned, or why it failed.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from tunelab.progress import progress_bar

log = logging.getLogger("tunelab.search")

UNITS_PER_TRIAL = 100


class SearchDisplay(TrainerCallback):
    """A context manager around the search; as a Trainer callback it follows the running trial."""

    def __init__(self, trials: int):
        self.trials = max(trials, 1)
        self.started = 0  # trials this process has started
        self.progress = progress_bar()
        self.task = self.progress.add_task("search", total=self.trials * UNITS_PER_TRIAL)

    def __enter__(self) -> SearchDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def start_trial(self, number: int, values: dict[str, Any]) -> None:
        self.started += 1
        settings = ", ".join(f"{key.removeprefix('train.')}={value}" for key, value in values.items())
        self.progress.update(self.task, description=f"search: trial {min(self.started, self.trials)} of "
                                                    f"{self.trials} (#{number}: {settings})",
                             completed=self._units(self.started - 1))

    def on_step_end(self, args, state, control, **kwargs):
        share = min(state.global_step / max(state.max_steps, 1), 0.99)  # the trial ends after its scoring
        self.progress.update(self.task, completed=self._units(self.started - 1 + share))

    def end_trial(self, study: optuna.Study, number: int, outcome: str, value: float | None = None) -> None:
        """Log how trial `number` ended (its `value` when it finished), beside the best score so far, and
        count it done."""
        self.progress.update(self.task, completed=self._units(self.started))
        best = best_value(study, value)
        best_text = f"; best so far {best:.4f}" if best is not None else ""
        log.info("trial %d %s%s", number, outcome, best_text)

    def _units(self, trials_done: float) -> float:
        return min(trials_done, self.trials) * UNITS_PER_TRIAL


def best_value(study: optuna.Study, value: float | None = None) -> float | None:
    """The best finished score, counting `value` of a trial about to finish."""
    values = [trial.value for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    values += [value] if value is not None else []
    if not values:
        return None
    return (min if study.direction == optuna.study.StudyDirection.MINIMIZE else max)(values)

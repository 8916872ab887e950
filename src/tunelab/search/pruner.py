"""Successive halving that does not decide on noise."""

from __future__ import annotations

import math

import optuna
from optuna.pruners._successive_halving import _completed_rung_key, _get_current_rung
from optuna.study import StudyDirection


class NearTieHalvingPruner(optuna.pruners.BasePruner):
    """Optuna's asynchronous successive halving, except that a trial whose rung score lies within
    `margin` (relative) of the best score at that rung goes on too.

    Rung scores come from a validation subset early in training; two configurations a fraction of a
    percent apart there (LoRA ranks 8 and 16 at the same learning rate) are a coin flip, and cutting
    the wrong one loses the grid's best. Only ties with the leader pass (not ties among trials that
    are all behind, such as learning rates too small to move the loss yet), so this costs training
    only where it is that close; clearly worse trials are cut exactly as Optuna's pruner cuts them.
    """

    def __init__(self, min_resource: int, reduction_factor: int, margin: float):
        self.halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource,
                                                              reduction_factor=reduction_factor)
        self.margin = margin

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not self.halving.prune(study, trial):
            return False
        value = trial.intermediate_values[trial.last_step]
        if math.isnan(value) or self.margin <= 0:
            return True
        scored = study._storage.get_trial(trial._trial_id)  # holds the rung Optuna has just recorded
        rung = _completed_rung_key(_get_current_rung(scored) - 1)
        scores = [t.system_attrs[rung] for t in study.get_trials(deepcopy=False) if rung in t.system_attrs]
        best = max(scores) if study.direction == StudyDirection.MAXIMIZE else min(scores)
        return abs(value - best) > self.margin * abs(best)

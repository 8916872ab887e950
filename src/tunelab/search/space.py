"""The search space: dotted config keys mapped to grid values or TPE ranges.

Every value is checked against the config model before any trial runs, so a mistyped key or a
value of the wrong type is an error up front, not in trial seven.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from pydantic import ValidationError

from tunelab.config import Range, TunelabConfig
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

TRAINING_LENGTH_KEYS = ("train.epochs", "train.max_steps")
LOSS_SHAPING_KEY = "train.label_smoothing"


def with_values(config: TunelabConfig, values: dict[str, Any]) -> TunelabConfig:
    """A copy of `config` with dotted keys set to `values`, validated like a config file."""
    tree = config.model_dump(mode="json")
    for dotted, value in values.items():
        node = tree
        keys = dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise TunelabError(f"search.space: unknown key '{dotted}'")
            node = node[key]
        if keys[-1] not in node:
            allowed = ", ".join(sorted(node))
            raise TunelabError(f"search.space: unknown key '{dotted}' (allowed there: {allowed})")
        node[keys[-1]] = value
    try:
        return TunelabConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TunelabError(f"search.space: '{'.'.join(map(str, first['loc']))}': {first['msg']}") from None


def grid_points(config: TunelabConfig) -> list[dict[str, Any]]:
    """Every combination of the listed values, in a fixed order."""
    space = config.search.space
    ranges = [key for key, values in space.items() if isinstance(values, Range)]
    if ranges:
        raise TunelabError(f"search.space: '{ranges[0]}' is a range; grid and halving need a list of values")
    keys = list(space)
    return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*space.values())]


def validate_space(config: TunelabConfig) -> None:
    space = config.search.space
    if not space:
        raise TunelabError("search.space is empty: give at least one key, e.g. train.learning_rate: [1e-4, 3e-4]")
    for key, values in space.items():
        if isinstance(values, list):
            if not values:
                raise TunelabError(f"search.space: '{key}' has no values")
            for value in values:
                with_values(config, {key: value})
        else:
            with_values(config, {key: int(values.low) if values.integer else values.low})


def warn_about_unfair_rungs(config: TunelabConfig) -> None:
    """Say up front when halving's rung scores cannot rank the space fairly.

    Halving compares trials after equal shares of their own training, on validation answer loss by
    default: epochs or steps in the space judge shorter trainings on fewer examples, and label
    smoothing raises that loss by design (it keeps probability off the right answer), so its
    trials are cut whatever their accuracy (seen on symptom2disease in both cases).
    """
    if config.search.strategy != "halving":
        return
    lengths = [key for key in TRAINING_LENGTH_KEYS if key in config.search.space]
    if lengths:
        log.warning("search.space varies %s under halving: trials are compared after equal shares of their own "
                    "training, so a shorter training is judged on fewer examples and cut first; keep the length "
                    "fixed (halving already decides how far each trial trains) or use --strategy grid",
                    " and ".join(lengths))
    if LOSS_SHAPING_KEY in config.search.space and config.search.intermediate == "loss":
        log.warning("search.space varies %s under halving on validation loss: smoothing raises that loss by "
                    "design, so its trials are cut whatever their accuracy; set search.intermediate: metric or "
                    "use --strategy grid", LOSS_SHAPING_KEY)


def suggest(trial, config: TunelabConfig) -> dict[str, Any]:
    """Values for one trial: categorical for lists, float/int for ranges (what TPE models)."""
    values = {}
    for key, spec in config.search.space.items():
        if isinstance(spec, Range):
            if spec.integer:
                values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
            else:
                values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        else:
            values[key] = trial.suggest_categorical(key, spec)
    return values

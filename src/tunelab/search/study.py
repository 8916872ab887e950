"""Run a search: an Optuna study whose trials each train a fresh model and score it on validation.

Strategies: `grid` (GridSampler, every combination), `halving` (the same grid with a
SuccessiveHalvingPruner fed by intermediate validation scores) and `tpe` (TPESampler, n_trials).
The study lives in an RDB storage (SQLite in the run directory by default), so an interrupted search
resumes where it stopped and several workers can share one study.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import time
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from transformers import TrainerCallback

from tunelab.config import TunelabConfig
from tunelab.data.split import stratified_subset
from tunelab.errors import TunelabError
from tunelab.evaluate.validation import resolve_metric, score_examples
from tunelab.rundir import RunDir, process_alive, read_jsonl
from tunelab.search.display import SearchDisplay
from tunelab.search.pruner import NearTieHalvingPruner
from tunelab.search.space import grid_points, suggest, validate_space, with_values
from tunelab.train.callbacks import TrainingDiverged
from tunelab.train.tracking import TrackedRun
from tunelab.train.trainer import run_training

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

WORKER = f"{socket.gethostname()}:{os.getpid()}"


class IntermediateScores(TrainerCallback):
    """Scores the model on validation rows at set points of its training and reports them to Optuna.

    Progress is counted in `units` per training run (the share of its optimizer steps), so trials with
    other batch sizes or lengths meet at the same rungs. With a pruner, a trial that falls behind at a
    rung stops there; the pruner is not asked at the last step: the tokens are spent by then, and the
    finished trial is ranked on the search metric like every other.
    """

    def __init__(self, trial: optuna.Trial, score, points: list[int], units: int, effective_batch: int):
        self.trial, self.score = trial, score
        self.pending, self.units, self.batch = sorted(points), units, effective_batch
        self.pruned_at: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        done = state.global_step * self.units / state.max_steps
        due = [point for point in self.pending if point <= done + 1e-9]
        if not due:
            return
        self.pending = self.pending[len(due):]
        self.trial.report(self.score(model), due[-1])  # the pruner checks every rung up to that point
        if state.global_step < state.max_steps and self.trial.should_prune():
            self.pruned_at = state.global_step * self.batch
            control.should_training_stop = True


def progress_plan(config: TunelabConfig) -> tuple[int, list[int]]:
    """(progress units per trial, the points where a trial is scored).

    The scores of the validation curves are evenly spaced (`reports_per_trial`); halving's rungs fall
    at 1/η^rungs, …, 1/η of training: with `reports_per_trial` units per first rung, the pruner's
    min_resource, both sets are whole numbers of units.
    """
    search = config.search
    units = search.reports_per_trial * search.reduction_factor ** search.rungs
    curve = [k * units // search.reports_per_trial for k in range(1, search.reports_per_trial + 1)]
    rungs = [search.reports_per_trial * search.reduction_factor ** j for j in range(search.rungs)]
    return units, sorted(set(curve) | set(rungs))


def intermediate_measure(config: TunelabConfig, metric: str) -> tuple[str, float]:
    """(what the intermediate scores measure, sign): reported values follow the study's direction,
    so a loss tracked for an accuracy study is reported negated."""
    if config.search.intermediate == "loss" and metric != "loss":
        return "loss", -1.0
    return metric, 1.0


class Objective:
    """Train one configuration from the base model and return its validation score."""

    def __init__(self, config: TunelabConfig, run_dir: RunDir, metric: str, display: SearchDisplay):
        self.config, self.run_dir, self.metric, self.display = config, run_dir, metric, display
        validation = read_jsonl(run_dir.split("validation"))
        train = read_jsonl(run_dir.split("train"))
        labels = {e["label"] for e in train + validation if "label" in e}
        self.labels = sorted(labels) or None
        self.tokenizer = _tokenizer_for(config)
        # What scoring a trial costs is bounded: the same stratified rows for every trial.
        search = config.search
        self.ranked_on = stratified_subset(validation, search.validation_examples, config.seed,
                                           "search.validation_examples")
        self.intermediate_rows = stratified_subset(validation, search.eval_examples, config.seed,
                                                   "search.eval_examples", quiet=True)

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest(trial, self.config)
        _refuse_duplicate(trial, ends_the_search=self.config.search.strategy != "tpe")
        trial_config = with_values(self.config, values)
        trial_config.train.evaluate_after = False
        train = trial_config.train
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("validation_rows", len(self.ranked_on))
        trial.set_user_attr("effective_batch_size", train.per_device_batch_size * train.gradient_accumulation_steps)
        folder = trial_folder(self.run_dir, trial.number)
        shutil.rmtree(folder.root, ignore_errors=True)
        trial_config.output_dir = str(folder.root)
        subset = self.intermediate_rows
        measure, sign = intermediate_measure(self.config, self.metric)
        units, points = progress_plan(self.config)
        reporter = IntermediateScores(
            trial,
            lambda model: sign * score_examples(model, self.tokenizer, subset, self.labels, trial_config, measure),
            points, units, train.per_device_batch_size * train.gradient_accumulation_steps,
        )
        started = time.perf_counter()
        log.info("trial %d: %s", trial.number, ", ".join(f"{k.removeprefix('train.')}={v}" for k, v in values.items()))
        self.display.start_trial(trial.number, values)
        with TrackedRun(trial_config, self.run_dir.root, f"trial-{trial.number:04d}") as tracked:
            value = self._train_and_score(trial, trial_config, folder, reporter, tracked.callbacks, started)
            tracked.log_result(values, {f"validation_{self.metric}": value})
        return value

    def _train_and_score(self, trial: optuna.Trial, trial_config: TunelabConfig, folder: RunDir,
                         reporter: IntermediateScores, callbacks: list, started: float) -> float:
        def seconds() -> str:
            return f"{time.perf_counter() - started:.0f} s"

        try:
            outcome = run_training(trial_config, folder, callbacks=(reporter, self.display, *callbacks), quiet=True)
        except Exception as error:
            if not (isinstance(error, TrainingDiverged) or _out_of_memory(error)):
                raise
            raise self._failed(trial, _failure_reason(error), seconds()) from error
        finally:
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("training_tokens", outcome.summary["tokens_seen"])
        trial.set_user_attr("steps", outcome.summary["steps"])
        shutil.rmtree(folder.checkpoints, ignore_errors=True)  # trials keep their final weights only
        if reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at_examples", reporter.pruned_at)
            self.display.end_trial(trial.study, trial.number, f"pruned after {reporter.pruned_at} examples "
                                                              f"({seconds()})")
            raise optuna.TrialPruned(f"pruned after {reporter.pruned_at} examples")
        value = score_examples(outcome.model, outcome.tokenizer, self.ranked_on, self.labels, trial_config,
                               self.metric)
        if not math.isfinite(value):
            raise self._failed(trial, f"validation {self.metric} is {value}", seconds())
        self.display.end_trial(trial.study, trial.number, f"validation {self.metric} {value:.4f} ({seconds()})", value)
        return value

    def _failed(self, trial: optuna.Trial, reason: str, seconds: str) -> TrialFailed:
        """Record and show why the trial failed; the search marks it failed and goes on."""
        trial.set_user_attr("fail_reason", reason)
        self.display.end_trial(trial.study, trial.number, f"failed: {reason} ({seconds})")
        return TrialFailed(f"trial {trial.number}: {reason}")


class TrialFailed(Exception):
    """A trial that diverged, ran out of memory or scored NaN: a failed trial, not a failed search."""


def _out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError (found by test_fuzz: a search over
    train.lora.r with 10**12 in it asked for 256 TB)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def _failure_reason(error: BaseException) -> str:
    """One line a user can act on; the CPU allocator's message starts with a C++ enforce trace."""
    reason = str(error).splitlines()[0]
    if "DefaultCPUAllocator: " in reason:
        reason = "out of CPU memory: " + reason.split("DefaultCPUAllocator: ", 1)[1].removeprefix(
            "can't allocate memory: ")
    return reason


class _ReportedFailures(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warnings (one with a traceback): the search display already
    says in one line why each trial failed, and a failure the search does not catch reaches the CLI."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"Trial \d+ failed", record.getMessage())


logging.getLogger("optuna.study._optimize").addFilter(_ReportedFailures())  # where Optuna logs them


def trial_folder(run_dir: RunDir, number: int) -> RunDir:
    """search/trials/NNNN: a trial's own run directory, reading the run's prepared data."""
    return RunDir(run_dir.search / "trials" / f"{number:04d}", data=run_dir.data)


class DuplicateTrial(Exception):
    """The values are already taken by another trial: nothing is trained for them."""


def _refuse_duplicate(trial: optuna.Trial, ends_the_search: bool) -> None:
    """Fail a trial whose values another trial runs or ran. On a shared grid that only happens in the
    race for its last points, so the search ends there (`ends_the_search`); TPE over lists proposes
    repeats often, and the next trial simply samples again."""
    study = trial.study
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        if other.number != trial.number and other.params == trial.params:
            trial.set_user_attr("fail_reason", f"duplicate of trial {other.number}")
            if ends_the_search:
                study.stop()
            raise DuplicateTrial(f"values already taken by trial {other.number}")


def _is_duplicate(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.user_attrs.get("fail_reason", "").startswith("duplicate of trial")


def space_size(config: TunelabConfig) -> int | None:
    """How many distinct value combinations the space holds; None when a range makes it unbounded."""
    if any(not isinstance(values, list) for values in config.search.space.values()):
        return None
    return math.prod(len(set(map(str, values))) for values in config.search.space.values())


# TPE may propose taken values again and again once it is confident; each repeat costs no training,
# and this many per trial of the budget bound the loop.
REPEATS_PER_TRIAL = 10


class TrialBudget:
    """Ends a TPE search after `n_trials` trials that trained (repeats do not count) or when every
    combination of a list-valued space has been tried."""

    def __init__(self, n_trials: int, combinations: int | None):
        self.n_trials, self.combinations = n_trials, combinations

    def remaining(self, study: optuna.Study) -> int:
        """Trials still to train: the budget left, or fewer when few combinations are left untried."""
        trained = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL)) if not _is_duplicate(t)]
        left = self.n_trials - len(trained)
        if self.combinations is not None:
            left = min(left, self.combinations - len({tuple(sorted(t.params.items())) for t in trained}))
        return max(left, 0)

    def spent(self, study: optuna.Study) -> bool:
        return self.remaining(study) == 0

    def __call__(self, study: optuna.Study, _trial) -> None:
        if self.spent(study):
            study.stop()


def _tokenizer_for(config: TunelabConfig):
    from tunelab.model.load import load_tokenizer
    from tunelab.model.source import materialize

    return load_tokenizer(materialize(config.model), config.model)


def storage_url(config: TunelabConfig, run_dir: RunDir) -> str:
    if config.search.storage:
        return config.search.storage
    run_dir.search.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(run_dir.search / 'study.db').resolve()}"


def _storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The RDB storage; workers started together on a new database race to create its tables, so retry."""
    import sqlalchemy.exc

    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=30, grace_period=120,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )

    for attempt in range(attempts - 1):
        try:
            return connect()
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(0.5 + attempt)
    return connect()


def open_study(config: TunelabConfig, run_dir: RunDir, metric: str) -> optuna.Study:
    search = config.search
    storage = _storage(storage_url(config, run_dir))
    if search.strategy == "tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=config.seed)
    else:
        sampler = optuna.samplers.GridSampler({k: list(v) for k, v in search.space.items()}, seed=config.seed)
    pruner = (
        NearTieHalvingPruner(min_resource=search.reports_per_trial, reduction_factor=search.reduction_factor,
                             margin=search.tie_margin)
        if search.strategy == "halving" else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        storage=storage, study_name=search.study_name, sampler=sampler, pruner=pruner,
        direction="minimize" if metric == "loss" else "maximize", load_if_exists=True,
    )


def _retry_dead_local_trials(study: optuna.Study, run_dir: RunDir) -> None:
    """Trials left RUNNING by a killed process on this machine fail now and run again; their
    half-written trial folders go. Every worker checks when it starts and after each trial, so a
    surviving worker picks the trial up; the row lock of the FAIL update lets one worker win.

    (Workers on other machines are covered by Optuna's heartbeat after its grace period.)
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        try:  # the reason first: a finished trial takes no attribute
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {worker} died; run again")
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first and queued the retry
        # As Optuna's RetryFailedTrialCallback: the system attributes (the grid point) travel with the
        # retry, so the grid sampler counts it as that point; the dead worker's user attributes do not.
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={"retry_of": trial.number}, system_attrs={**trial.system_attrs, "failed_trial": trial.number}))
        shutil.rmtree(trial_folder(run_dir, trial.number).root, ignore_errors=True)
        log.info("trial %d was interrupted (worker %s is gone): it runs again", trial.number, worker)


def _grid_left(study: optuna.Study, grid: list[dict[str, Any]]) -> int:
    """Grid points no trial has finished, runs or waits for: what this worker may still start."""
    taken = [trial.params for trial in study.get_trials(deepcopy=False)
             if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
             or (trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs)]
    return sum(point not in taken for point in grid)


def run_search(config: TunelabConfig, run_dir: RunDir) -> optuna.Study:
    """Run (or resume, or join) the study until the grid or the trial budget is used up."""
    validate_space(config)
    validation = read_jsonl(run_dir.split("validation"))
    if not validation:
        raise TunelabError("search needs a validation split: set data.validation_size (e.g. 0.1)")
    has_labels = "label" in validation[0]
    metric = resolve_metric(config.search.metric, has_labels)
    study = open_study(config, run_dir, metric)
    study.set_user_attr("metric", metric)
    measure, sign = intermediate_measure(config, metric)
    study.set_user_attr("intermediate", {"measure": measure, "sign": sign, "units": progress_plan(config)[0]})
    _retry_dead_local_trials(study, run_dir)
    failures = (TrialFailed, DuplicateTrial)

    def retry_dead_trials(study: optuna.Study, _trial) -> None:
        _retry_dead_local_trials(study, run_dir)

    if config.search.strategy == "tpe":
        budget = TrialBudget(config.search.n_trials, space_size(config))
        if budget.spent(study):  # a resumed search may have used its budget already
            return study
        with SearchDisplay(budget.remaining(study)) as display:
            study.optimize(Objective(config, run_dir, metric, display), callbacks=[retry_dead_trials, budget],
                           catch=failures, n_trials=config.search.n_trials * (1 + REPEATS_PER_TRIAL))
        return study
    grid = grid_points(config)

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def stop_when_grid_is_taken(study: optuna.Study, _trial) -> None:
        if not _grid_left(study, grid) and not waiting():
            study.stop()

    if _grid_left(study, grid) or waiting():
        with SearchDisplay(_grid_left(study, grid) + waiting()) as display:
            study.optimize(Objective(config, run_dir, metric, display),
                           callbacks=[retry_dead_trials, stop_when_grid_is_taken], catch=failures)
    return study

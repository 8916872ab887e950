"""Hyperparameter search on the tiny Qwen2: grid, halving, resume, failures, shared workers."""

import csv
import os
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from transformers import TrainerControl, TrainerState
from typer.testing import CliRunner

from conftest import make_label_rows, write_config, write_csv
from tunelab.cli import app
from tunelab.config import load_config
from tunelab.data.prepare import prepare_stage
from tunelab.rundir import RunDir
from tunelab.search.pruner import NearTieHalvingPruner
from tunelab.search.results import write_results
from tunelab.search.study import IntermediateScores, run_search

GRID = {"train.learning_rate": [1e-3, 1e-2], "train.lora.r": [4, 8]}


def search_config(tmp_path, model_dir, space=GRID, **search):
    csv_path = write_csv(tmp_path / "d.csv", make_label_rows(per_label=16))
    path = write_config(tmp_path, {"source": str(csv_path), "validation_size": 0.2}, model_dir,
                        train={"max_steps": 6, "save_steps": 100},
                        search={"space": space, "metric": "loss", **search})
    return path


def run(config_path, *extra):
    config = load_config(config_path, list(extra))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    return config, run_dir, run_search(config, run_dir)


def finished_params(study):
    return [t.params for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]


def test_grid_runs_every_combination_and_exports_the_best(tmp_path, tiny_model_dir):
    config, run_dir, study = run(search_config(tmp_path, tiny_model_dir))
    params = finished_params(study)
    assert len(params) == 4 and len({tuple(sorted(p.items())) for p in params}) == 4
    result = write_results(config, study, run_dir)
    with open(run_dir.search / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    best_row = min(rows, key=lambda r: float(r["loss"]))
    best = load_config(run_dir.search / "best.yaml")
    assert best.train.learning_rate == float(best_row["train.learning_rate"]) == result["best_params"][
        "train.learning_rate"]
    assert best.train.lora.r == int(best_row["train.lora.r"]) and best.search.space == {}
    assert {r["state"] for r in rows} == {"COMPLETE"} and all(int(r["training_tokens"]) > 0 for r in rows)
    for picture in ("metric_vs_lr.png", "grid_heatmap.png", "validation_curves.png"):
        assert (run_dir.search / picture).stat().st_size > 1000


def test_halving_prunes_trials_and_saves_tokens(tmp_path, tiny_model_dir):
    space = {"train.learning_rate": [1e-2, 2e-2, 3e-2, 1e-6, 3e-6, 1e-5]}  # strong first: weak ones get cut
    _, _, study = run(search_config(tmp_path, tiny_model_dir, space=space, strategy="halving",
                                    reduction_factor=2, rungs=2, reports_per_trial=3), "train.max_steps=12")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert pruned and complete and len(pruned) + len(complete) == 6
    assert max(t.user_attrs["training_tokens"] for t in pruned) < min(
        t.user_attrs["training_tokens"] for t in complete)
    # rungs after 1/4 and 1/2 of training (3 and 6 of 12 units), curve points every third
    assert {step for t in pruned for step in t.intermediate_values} <= {3, 4, 6}
    assert sorted(complete[0].intermediate_values) == [3, 4, 6, 8, 12]
    assert study.best_trial.params["train.learning_rate"] >= 1e-2


def test_an_accuracy_search_prunes_on_validation_loss(tmp_path, tiny_model_dir):
    """Early on every config scores accuracy 0 (ties promote everyone); the loss still separates them."""
    space = {"train.learning_rate": [1e-2, 1e-6, 2e-6, 3e-6]}
    config, run_dir, study = run(search_config(tmp_path, tiny_model_dir, space=space, strategy="halving",
                                               reduction_factor=2, reports_per_trial=3),
                                 "train.max_steps=12", "search.metric=accuracy")
    assert study.get_trials(states=(TrialState.PRUNED,))
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        assert all(value < 0 for value in trial.intermediate_values.values())  # negated losses
        if trial.state == TrialState.COMPLETE:
            assert 0.0 <= trial.value <= 1.0  # ranked on accuracy
    assert study.user_attrs["intermediate"] == {"measure": "loss", "sign": -1.0, "units": 24}


def test_a_trial_that_trained_to_the_end_is_not_pruned_at_a_rung_on_its_last_step():
    """Halving's last rung is the end of training: by then the tokens are spent, so the trial finishes
    and is ranked on the metric instead of being thrown away."""
    study = optuna.create_study(pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    leader = study.ask()
    for point, loss in ((1, 3.0), (2, 2.0), (4, 1.0)):
        leader.report(loss, point)
        assert not leader.should_prune()  # the first trial is always promoted
    study.tell(leader, 1.0)
    follower = study.ask()  # better than the leader at the early rungs, worse at the end
    losses = iter([2.5, 1.5, 1.2, 1.1])
    reporter = IntermediateScores(follower, lambda model: next(losses), points=[1, 2, 3, 4], units=4,
                                  effective_batch=8)
    state, control = TrainerState(max_steps=8), TrainerControl()
    for step in range(1, 9):
        state.global_step = step
        reporter.on_step_end(None, state, control)
    assert sorted(follower.storage.get_trial(follower._trial_id).intermediate_values) == [1, 2, 3, 4]
    assert reporter.pruned_at is None and not control.should_training_stop
    assert follower.should_prune()  # the pruner would have cut it there


@pytest.mark.parametrize("margin, twin_goes_on", [(0.01, True), (0.0, False)])
def test_halving_lets_a_near_tie_with_the_leader_through_and_cuts_the_rest(margin, twin_goes_on):
    """Negated losses as an accuracy search reports them: a trial 0.5% behind the leader at a rung is a
    coin flip on a validation subset; one 20% behind is not, even when tied with Optuna's bar."""

    def new_study():
        return optuna.create_study(direction="maximize",
                                   pruner=NearTieHalvingPruner(min_resource=1, reduction_factor=2, margin=margin))

    def first_rung(study, loss: float) -> bool:
        trial = study.ask()
        trial.report(-loss, 1)
        return trial.should_prune()

    study = new_study()
    assert not first_rung(study, 1.0)  # the first trial is always promoted
    assert first_rung(study, 1.005) is not twin_goes_on
    assert first_rung(study, 1.2)
    assert first_rung(study, float("nan"))
    study = new_study()
    assert [first_rung(study, loss) for loss in (1.0, 1.2, 1.3)] == [False, True, True]
    assert first_rung(study, 1.2001)  # the bar is now 1.2 (the second of four); the leader is far


@pytest.mark.parametrize("n_trials, trained", [(3, 3), (6, 4)])
def test_tpe_skips_repeated_values_and_trains_n_trials_distinct_ones(tmp_path, tiny_model_dir, n_trials, trained):
    """TPE over lists proposes the same values again; a repeat is not trained, does not end the study
    and does not use up the budget, which ends at n_trials or when every combination is taken."""
    _, _, study = run(search_config(tmp_path, tiny_model_dir, strategy="tpe", n_trials=n_trials))
    params = [tuple(sorted(p.items())) for p in finished_params(study)]
    assert len(params) == trained and len(set(params)) == trained


def test_a_search_shows_its_progress_and_each_trial_s_score_on_a_bounded_validation_subset(tmp_path, tiny_model_dir):
    config_path = search_config(tmp_path, tiny_model_dir, space={"train.learning_rate": [1e-3, 1e-2]},
                                validation_examples=3)
    done = subprocess.run([sys.executable, "-m", "tunelab", "search", str(config_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # stderr is a pipe, as in a log file: the display logs its line; on a terminal it is a rich bar.
    assert "search: trial 2 of 2 (#1: learning_rate=0.001): 200/200 (100%)" in done.stderr
    ended = [line for line in done.stderr.splitlines() if "validation loss" in line and "best so far" in line]
    assert len(ended) == 2 and "trial 0 validation loss" in ended[0], done.stderr
    assert "scoring a label-stratified subset of 3 of" in done.stderr and "(search.validation_examples" in done.stderr
    study = optuna.load_study(study_name="tunelab", storage=f"sqlite:///{tmp_path / 'run' / 'search' / 'study.db'}")
    assert {trial.user_attrs["validation_rows"] for trial in study.trials} == {3}


def test_nan_loss_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path, tiny_model_dir):
    space = {"train.learning_rate": [1e30, 1e-2]}
    _, _, study = run(search_config(tmp_path, tiny_model_dir, space=space))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].params["train.learning_rate"] == 1e30
    assert "learning rate" in failed[0].user_attrs["fail_reason"]
    assert study.best_trial.params["train.learning_rate"] == 1e-2


def _search_process(config_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab", "search", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _kill_when(config_path, logged: str) -> None:
    """Start `tunelab search` and SIGKILL it when it logs `logged` (a trial's start)."""
    process = _search_process(config_path)
    for line in process.stderr:
        if logged in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)


def test_killed_search_resumes_without_repeating_finished_trials(tmp_path, tiny_model_dir):
    config_path = search_config(tmp_path, tiny_model_dir)
    (tmp_path / "config.yaml").write_text(config_path.read_text().replace("max_steps: 6", "max_steps: 40"))
    _kill_when(config_path, "trial 1:")
    storage = f"sqlite:///{tmp_path / 'run' / 'search' / 'study.db'}"
    before = optuna.load_study(study_name="tunelab", storage=storage)
    assert [t.state for t in before.get_trials()][:2] == [TrialState.COMPLETE, TrialState.RUNNING]
    first = before.trials[0]

    resumed = subprocess.run([sys.executable, "-m", "tunelab", "search", str(config_path)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = optuna.load_study(study_name="tunelab", storage=storage)
    params = finished_params(study)
    assert len(params) == 4 and sum(p == first.params for p in params) == 1
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == first.value
    assert "trial 0:" not in resumed.stderr


def test_a_trial_killed_in_a_two_point_grid_is_rerun_as_its_grid_point(tmp_path, tiny_model_dir):
    """The rerun carries the killed trial's grid point (as Optuna's own retry callback does): Optuna's grid
    sampler reads it when the rerun ends with one point left."""
    config_path = search_config(tmp_path, tiny_model_dir, space={"train.learning_rate": [1e-3, 1e-2]})
    (tmp_path / "config.yaml").write_text(config_path.read_text().replace("max_steps: 6", "max_steps: 40"))
    _kill_when(config_path, "trial 0:")
    resumed = subprocess.run([sys.executable, "-m", "tunelab", "search", str(config_path)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = optuna.load_study(study_name="tunelab", storage=f"sqlite:///{tmp_path / 'run' / 'search' / 'study.db'}")
    assert sorted(p["train.learning_rate"] for p in finished_params(study)) == [1e-3, 1e-2]
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(rerun) == 1 and rerun[0].system_attrs["grid_id"] == study.trials[0].system_attrs["grid_id"]


@pytest.mark.parametrize("workers", [2])
def test_workers_sharing_one_storage_split_the_grid(tmp_path, tiny_model_dir, workers):
    space = {"train.learning_rate": [1e-3, 3e-3, 1e-2], "train.lora.r": [4, 8]}
    config_path = search_config(tmp_path, tiny_model_dir, space=space)
    (tmp_path / "config.yaml").write_text(config_path.read_text().replace("max_steps: 6", "max_steps: 30"))
    config = load_config(config_path)
    prepare_stage(config, RunDir(config.output_dir))  # as the first worker would; then both join
    processes = [_search_process(config_path) for _ in range(workers)]
    for process in processes:
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-2000:]
    study = optuna.load_study(study_name="tunelab", storage=f"sqlite:///{tmp_path / 'run' / 'search' / 'study.db'}")
    params = [tuple(sorted(p.items())) for p in finished_params(study)]
    assert len(params) == 6 and len(set(params)) == 6
    assert len({t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}) == workers


def test_three_workers_on_postgresql_survive_a_killed_worker(tmp_path, tiny_model_dir):
    """Three `tunelab search` workers share a 6-point grid on a real PostgreSQL server; one is killed with
    SIGKILL mid-trial. Its trial runs again on a survivor, every point completes exactly once, nothing
    else repeats, the results are right, and the password reaches no file or log."""
    import time
    import uuid

    from postgres_server import postgres_server

    password = f"pw-{uuid.uuid4().hex}"
    space = {"train.learning_rate": [1e-3, 3e-3, 1e-2], "train.lora.r": [4, 8]}
    config_path = search_config(tmp_path, tiny_model_dir, space=space)
    (tmp_path / "config.yaml").write_text(config_path.read_text().replace("max_steps: 6", "max_steps: 60"))
    config = load_config(config_path)
    prepare_stage(config, RunDir(config.output_dir))  # as the first worker would; then all three join
    started = time.monotonic()
    with postgres_server(password) as url:
        logs = [tmp_path / f"worker{i}.log" for i in range(3)]
        workers = [subprocess.Popen([sys.executable, "-m", "tunelab", "search", str(config_path), "--storage", url],
                                    stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ,
                                    "PYTHONUNBUFFERED": "1"}) for log in logs]
        victim, victim_log = workers[0], logs[0]
        while "trial " not in victim_log.read_text() and time.monotonic() - started < 120:
            time.sleep(0.2)
        time.sleep(0.5)  # into its trial (loading the model alone takes longer)
        killed_trial = int(victim_log.read_text().split("trial ")[-1].split(":")[0])
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)  # reaped: its pid is gone, as after a real crash
        for worker in workers[1:]:
            assert worker.wait(timeout=240) == 0, worker.args
        study = optuna.load_study(study_name="tunelab", storage=url)
        trials = study.get_trials()
    assert time.monotonic() - started < 180
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    grid = {(lr, r) for lr in space["train.learning_rate"] for r in space["train.lora.r"]}
    done = [(t.params["train.learning_rate"], t.params["train.lora.r"]) for t in complete]
    assert sorted(done) == sorted(grid)  # every combination COMPLETE exactly once
    killed = trials[killed_trial]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
    retry = [t for t in complete if t.user_attrs.get("retry_of") == killed_trial]
    assert len(retry) == 1 and retry[0].params == killed.params
    assert retry[0].user_attrs["worker"] != killed.user_attrs["worker"]
    trained = [t for t in trials if "steps" in t.user_attrs or t is killed]
    assert len(trained) == 7  # six combinations and the killed one: nothing else trained twice
    with open(tmp_path / "run" / "search" / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["state"] for r in rows).count("COMPLETE") == 6
    best = min(complete, key=lambda t: t.value)
    best_config = load_config(tmp_path / "run" / "search" / "best.yaml")
    assert (best_config.train.learning_rate, best_config.train.lora.r) == (
        best.params["train.learning_rate"], best.params["train.lora.r"])
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaks


@pytest.mark.parametrize(("space", "settings", "warned"), [
    ({"train.epochs": [1, 2]}, {"strategy": "halving"}, "varies train.epochs under halving"),
    ({"train.epochs": [1, 2]}, {"strategy": "grid"}, None),
    ({"train.label_smoothing": [0.0, 0.1]}, {"strategy": "halving"}, "varies train.label_smoothing under halving"),
    ({"train.label_smoothing": [0.0, 0.1]}, {"strategy": "halving", "intermediate": "metric"}, None),
    ({"train.learning_rate": [1e-4, 2e-4]}, {"strategy": "halving"}, None),
])
def test_halving_rungs_that_cannot_rank_the_space_are_warned_about(tmp_path, tiny_model_dir, caplog, space,
                                                                   settings, warned):
    """Halving compares trials after equal shares of their own training on validation loss: with epochs
    in the space the shorter trainings are judged on fewer examples (seen on symptom2disease: every
    3-epoch trial fell at the first rung), and label smoothing raises that loss by design (every
    smoothing trial fell at the first rung), so the search says so before it starts."""
    from tunelab.pipeline import check_search_settings

    path = search_config(tmp_path, tiny_model_dir, space, strategy=settings["strategy"])
    config = load_config(path, [f"search.{key}={value}" for key, value in settings.items() if key != "strategy"])
    with caplog.at_level("WARNING", logger="tunelab.search.space"):
        check_search_settings(config)
    if warned:
        assert warned in caplog.text
    else:
        assert "under halving" not in caplog.text


def finished_study(metric, scores, validation_rows=167):
    study = optuna.create_study(direction="minimize" if metric == "loss" else "maximize")
    study.set_user_attr("metric", metric)
    for score in scores:
        study.add_trial(optuna.trial.create_trial(
            value=score, params={"train.learning_rate": 1e-4 * (len(study.trials) + 1)},
            distributions={"train.learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2)},
            user_attrs={"validation_rows": validation_rows}))
    return study


@pytest.mark.parametrize(("metric", "scores", "validation_rows", "level"), [
    # session 10's grid on symptom2disease: 8, 7 and 9 of 167 rows wrong: a ranking by chance
    ("accuracy", [0.9521, 0.9581, 0.9461], 167, [0, 2]),
    ("accuracy", [0.9581, 0.80], 167, []),  # 26 rows apart: a real difference
    ("accuracy", [0.9521, 0.9581], 100_000, []),  # the same gap on 100k rows is not chance
    ("loss", [0.31, 0.30], 167, []),  # a loss is not a binomial share: no claim
])
def test_trials_the_validation_rows_cannot_rank_below_the_best_are_named(metric, scores, validation_rows, level):
    """A search won by a row or two of 167 must not read as a better recipe: the trials within chance
    (95%) of the best are listed, and only those."""
    from tunelab.search.results import level_with_best

    assert level_with_best(finished_study(metric, scores, validation_rows)) == level


def test_a_trial_the_cpu_cannot_allocate_fails_and_the_search_goes_on(tmp_path, tiny_model_dir):
    """Found by test_fuzz: LoRA rank 10**12 asks the CPU allocator for 256 TB; its RuntimeError ended the
    whole search with a traceback. Out of memory is a failed trial with its reason, like a CUDA OOM."""
    config, run_dir, study = run(search_config(tmp_path, tiny_model_dir, {"train.lora.r": [10**12, 4]}))
    states = {t.params["train.lora.r"]: t for t in study.get_trials()}
    assert states[10**12].state == TrialState.FAIL
    assert states[10**12].user_attrs["fail_reason"].startswith("out of CPU memory: you tried to allocate")
    assert states[4].state == TrialState.COMPLETE
    assert write_results(config, study, run_dir)["best_params"] == {"train.lora.r": 4}


def test_a_search_whose_every_trial_fails_says_why_in_one_line(tmp_path, tiny_model_dir):
    """Found by test_fuzz: Optuna's warning put a traceback in the output of a failure the search had
    already reported, and the closing error only said to look in trials.csv."""
    config_path = search_config(tmp_path, tiny_model_dir, {"train.lora.r": [10**12]}, strategy="grid")
    result = CliRunner().invoke(app, ["search", str(config_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert error == ["error: no trial completed; trial 0 (train.lora.r=1000000000000) failed: out of CPU memory: "
                     "you tried to allocate 256000000000000 bytes. Error code 12 (Cannot allocate memory): nothing "
                     "to export (see search/trials.csv for every trial's reason)"], result.output

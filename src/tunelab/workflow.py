"""Stages wired to the run directory: what each `tunelab` command does, in order."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig, config_from_run_dir, load_config, save_config
from tunelab.data.prepare import duplicates_summary, prepare_stage
from tunelab.errors import TunelabError
from tunelab.model.source import resolve_source
from tunelab.rundir import RunDir, removed_on_failure

log = logging.getLogger(__name__)


def load(config_path: Path, overrides: list[str], output_dir: Path | None) -> tuple[TunelabConfig, RunDir]:
    """The validated config (with `--set` and `--output-dir` applied) and its run directory."""
    config = load_config(config_path, overrides)
    if output_dir:
        config.output_dir = str(output_dir)
    return config, RunDir(config.output_dir)


def train_run(config_path: Path, overrides: list[str], output_dir: Path | None,
              resume: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validate everything first (config, data, model path), then write the run and train."""
    config, run_dir = load(config_path, overrides, output_dir)
    resolve_source(config.model)
    if resume:
        if not run_dir.split("train").is_file():
            raise TunelabError(f"{run_dir.root}: nothing to resume (no data/train.jsonl)")
        config = _same_config_as_run(config, run_dir)
    from accelerate import PartialState

    from tunelab.train.trainer import run_training

    processes = PartialState()  # one process unless started by `accelerate launch` / torchrun
    with removed_on_failure(run_dir.root):
        if not resume:
            with processes.main_process_first():  # the others then find data/ prepared and skip it
                _prepare(config, run_dir)
        summary = run_training(config, run_dir, resume=resume).summary
    metrics = None
    if config.train.evaluate_after and processes.is_main_process:
        from tunelab.evaluate.runner import run_evaluation

        metrics = run_evaluation(config, run_dir)
    return summary, metrics


def _prepare(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    report = prepare_stage(config, run_dir)
    save_config(config, run_dir.config)
    counts = report["counts"]
    log.info("data: %d rows read, %s; K=%d clusters; split %s", counts["rows_read"], duplicates_summary(report),
             report["clusters"]["k"], report["sizes"])
    if report["clusters"].get("stopped_at_k_max"):
        log.warning("G-means stopped at its bound, K = prepare.k_max = %d: the data may hold more clusters "
                    "(raise prepare.k_max to let it look further)", report["clusters"]["k"])
    return report


def prepare_run(config_path: Path, overrides: list[str], output_dir: Path | None) -> tuple[RunDir, dict[str, Any]]:
    """`tunelab prepare`: only the data stage, into RUN_DIR/data."""
    config, run_dir = load(config_path, overrides, output_dir)
    with removed_on_failure(run_dir.root):
        return run_dir, _prepare(config, run_dir)


def search_run(config_path: Path, overrides: list[str], output_dir: Path | None) -> dict[str, Any]:
    """`tunelab search`: prepare (if needed), run or resume the study, export the winner."""
    config, run_dir = load(config_path, overrides, output_dir)
    with removed_on_failure(run_dir.root):
        _prepare(config, run_dir)
        return _search(config, run_dir)


def _search(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from tunelab.search.results import write_results
    from tunelab.search.study import run_search

    study = run_search(config, run_dir)
    return write_results(config, study, run_dir) | {"folder": str(run_dir.search)}


def _same_config_as_run(config, run_dir: RunDir):
    saved = config_from_run_dir(run_dir.root)
    if saved.model_dump() != config.model_dump():
        raise TunelabError(f"{run_dir.root}: --resume needs the config the run started with (it changed)")
    return saved


def evaluate_run(run_dir: Path, data_file: str | None, overrides: list[str]) -> dict[str, Any]:
    from tunelab.evaluate.runner import run_evaluation

    config = config_from_run_dir(run_dir, overrides)
    return run_evaluation(config, RunDir(run_dir), data_file)


def compare_decodings(run_dir: Path, data_file: str | None, overrides: list[str],
                      strategies: list[str]) -> dict[str, dict[str, Any]]:
    """The tuned model scored with each decoding strategy on the same examples."""
    from tunelab.evaluate.runner import run_evaluation
    from tunelab.rundir import write_json

    table = {}
    for strategy in strategies:
        config = config_from_run_dir(run_dir, [*overrides, f"evaluate.decoding.strategy={strategy}",
                                               "evaluate.compare_base=false"])
        table[strategy] = run_evaluation(config, RunDir(run_dir), data_file, write=False)["tuned"]
    write_json(RunDir(run_dir).eval / "decoding_comparison.json", table)
    return table

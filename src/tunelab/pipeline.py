"""`tunelab run`: prepare → search → train → evaluate → publish in one run directory, resumable.

Each stage's inputs (its config sections and the hashes of the stages it reads from) are hashed and
recorded in `stages.json` with its status and wall time. A stage that completed with the same
inputs is skipped; a changed setting re-runs that stage and everything after it; a training that was
interrupted continues from its newest complete checkpoint. `--from STAGE` forces a stage and the
ones after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig, load_config
from tunelab.data.prepare import input_hash
from tunelab.errors import TunelabError
from tunelab.model.source import resolve_source
from tunelab.rundir import RunDir, removed_on_failure, write_json

log = logging.getLogger(__name__)

STAGES = ("prepare", "search", "train", "evaluate", "publish")


def digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRecord:
    """stages.json: for each stage its input hash, status (running/complete/failed/skipped) and time."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def is_done(self, stage: str, stage_hash: str) -> bool:
        entry = self.stages.get(stage, {})
        return entry.get("hash") == stage_hash and entry.get("status") in ("complete", "skipped")

    def was_interrupted(self, stage: str, stage_hash: str) -> bool:
        entry = self.stages.get(stage, {})
        return entry.get("hash") == stage_hash and entry.get("status") in ("running", "failed")

    def mark(self, stage: str, stage_hash: str, status: str, seconds: float | None = None) -> None:
        self.stages[stage] = {"hash": stage_hash, "status": status, "wall_seconds": seconds}
        write_json(self.path, self.stages)


def run_pipeline(config: TunelabConfig, run_dir: RunDir, from_stage: str | None = None) -> dict[str, Any]:
    """Run every stage that is not done with the same inputs; return what each produced."""
    from tunelab import workflow

    if from_stage and from_stage not in STAGES:
        raise TunelabError(f"--from {from_stage}: not a stage (stages: {', '.join(STAGES)})")
    resolve_source(config.model)
    forced = set(STAGES[STAGES.index(from_stage):]) if from_stage else set()
    outputs: dict[str, Any] = {"skipped": []}
    with removed_on_failure(run_dir.root):  # bad input found while preparing leaves nothing behind
        run_dir.root.mkdir(parents=True, exist_ok=True)
        record = StageRecord(run_dir.root / "stages.json")
        hashes = {"prepare": input_hash(config)}
        _stage(record, "prepare", hashes["prepare"], "prepare" in forced, outputs,
               lambda resume: workflow._prepare(config, run_dir))

    # Search scores generated answers, so the answer budget is one of its inputs.
    hashes["search"] = digest(hashes["prepare"], config.model, config.train, config.search,
                              config.evaluate.max_new_tokens)
    if config.search.space:
        _stage(record, "search", hashes["search"], "search" in forced, outputs,
               lambda resume: workflow._search(config, run_dir))
        trained = load_config(run_dir.search / "best.yaml")
        trained.output_dir = config.output_dir
    else:
        record.mark("search", hashes["search"], "skipped")
        outputs["skipped"].append("search")
        trained = config

    hashes["train"] = digest(hashes["search"], trained.model, trained.train)
    _stage(record, "train", hashes["train"], "train" in forced, outputs,
           lambda resume: _train(trained, run_dir, resume))
    hashes["evaluate"] = digest(hashes["train"], config.evaluate)
    _stage(record, "evaluate", hashes["evaluate"], "evaluate" in forced, outputs,
           lambda resume: _evaluate(trained, config, run_dir))
    hashes["publish"] = digest(hashes["evaluate"], config.publish)
    _stage(record, "publish", hashes["publish"], "publish" in forced, outputs,
           lambda resume: _publish(trained, config, run_dir))
    from tunelab.report import write_report

    outputs["report"] = write_report(run_dir.root)
    return outputs


def _stage(record: StageRecord, stage: str, stage_hash: str, forced: bool, outputs: dict[str, Any],
           work: Callable[[bool], Any]) -> None:
    if record.is_done(stage, stage_hash) and not forced:
        log.info("%s: done before with the same inputs, skipped", stage)
        outputs["skipped"].append(stage)
        return
    resume = record.was_interrupted(stage, stage_hash) and not forced
    if resume:
        log.info("%s: continuing where the last run stopped", stage)
    record.mark(stage, stage_hash, "running")
    started = time.perf_counter()
    try:
        outputs[stage] = work(resume)
    except BaseException:
        record.mark(stage, stage_hash, "failed", round(time.perf_counter() - started, 1))
        raise
    record.mark(stage, stage_hash, "complete", round(time.perf_counter() - started, 1))


def _publish(trained: TunelabConfig, config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from tunelab.publish import publish

    return publish(trained.model_copy(update={"publish": config.publish, "evaluate": config.evaluate}), run_dir)


def _train(config: TunelabConfig, run_dir: RunDir, resume: bool) -> dict[str, Any]:
    from tunelab.config import save_config
    from tunelab.train.trainer import run_training

    save_config(config, run_dir.config)  # resuming without a complete checkpoint trains from the start
    return run_training(config, run_dir, resume=resume).summary


def _evaluate(trained: TunelabConfig, config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from tunelab.evaluate.runner import run_evaluation

    return run_evaluation(trained.model_copy(update={"evaluate": config.evaluate}), run_dir)

"""The one orchestrator: each `tunelab` command, and `tunelab run` (all stages, resumable).

Stages talk through files in the run directory (data/ → search/ → model/ → eval/ → publish/), so
every command can start from a run another one left. For `tunelab run`, each stage's inputs (the
config sections it reads and the hashes of the stages it reads from) are hashed and recorded in
`stages.json` with its status and wall time. A stage that completed with the same inputs is skipped;
a changed setting re-runs that stage and everything after it; a training that was interrupted
continues from its newest complete checkpoint. `--from STAGE` forces a stage and the ones after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig, config_dump, config_from_run_dir, load_config, save_config
from tunelab.data.prepare import duplicates_summary, input_hash, prepare_stage
from tunelab.errors import TunelabError
from tunelab.model.adapters import check_adapter_targets
from tunelab.model.source import check_source
from tunelab.rundir import RunDir, clear_stale, removed_on_failure, write_json
from tunelab.train.tracking import TrackedRun, check_trackers

log = logging.getLogger(__name__)

STAGES = ("prepare", "search", "train", "evaluate", "publish")


def load(config_path: Path, overrides: list[str], output_dir: Path | None) -> tuple[TunelabConfig, RunDir]:
    """The validated config (with `--set` and `--output-dir` applied) and its run directory."""
    config = load_config(config_path, overrides)
    if output_dir:
        config.output_dir = str(output_dir)
    run_dir = RunDir(config.output_dir)
    if run_dir.root.is_dir():
        clear_stale(run_dir.root)  # what a killed earlier command left
    return config, run_dir


# The stages, each reading and writing the run directory.

def prepare(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    report = prepare_stage(config, run_dir)
    save_config(config, run_dir.config)
    counts = report["counts"]
    log.info("data: %d rows read, %s; K=%d clusters; split %s", counts["rows_read"], duplicates_summary(report),
             report["clusters"]["k"], report["sizes"])
    if report.get("similar_labels"):
        pairs = report["similar_labels"]
        shown = "; ".join(f"'{p['labels'][0]}' ({p['rows'][0]} rows) ~ '{p['labels'][1]}' ({p['rows'][1]} rows)"
                          for p in pairs[:20])
        log.warning("%d label%s like a typo of another: %s%s; merge with data.label_map, e.g. {'%s': '%s'}",
                    len(pairs), " looks" if len(pairs) == 1 else "s look", shown, " ..." if len(pairs) > 20 else "",
                    *pairs[0]["labels"])
    sample = report.get("sample", {})
    if sample.get("size", 0) > sample.get("requested", float("inf")):
        log.warning("the training sample holds %d rows, %d more than prepare.sample asks: every label keeps "
                    "prepare.min_per_label=%d rows and every cluster one", sample["size"],
                    sample["size"] - sample["requested"], sample["min_per_label"])
    if sample.get("labels_below_floor"):
        below = sample["labels_below_floor"]
        log.warning("%d label%s fewer than prepare.min_per_label=%d rows in the pool (all taken): %s%s", len(below),
                    " has" if len(below) == 1 else "s have", sample["min_per_label"], ", ".join(below[:20]),
                    " ..." if len(below) > 20 else "")
    if report["clusters"].get("stopped_at_k_max"):
        log.warning("G-means stopped at its bound, K = prepare.k_max = %d: the data may hold more clusters "
                    "(raise prepare.k_max to let it look further)", report["clusters"]["k"])
    return report


def search(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from tunelab.search.results import write_results
    from tunelab.search.study import run_search

    study = run_search(config, run_dir)
    return write_results(config, study, run_dir) | {"folder": str(run_dir.search)}


def train(config: TunelabConfig, run_dir: RunDir, resume: bool) -> dict[str, Any]:
    from tunelab.train.trainer import run_training

    save_config(config, run_dir.config)  # resuming without a complete checkpoint trains from the start
    with TrackedRun(config, run_dir.root, "train") as tracked:
        return run_training(config, run_dir, resume=resume, callbacks=tuple(tracked.callbacks)).summary


def evaluate(config: TunelabConfig, run_dir: RunDir, data_file: str | None = None,
             write: bool = True) -> dict[str, Any]:
    from tunelab.evaluate.stage import run_evaluation

    return run_evaluation(config, run_dir, data_file, write)


def publish(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from tunelab.publish import publish as publish_stage

    return publish_stage(config, run_dir)


# The commands.

def check_search_settings(config: TunelabConfig) -> None:
    """What a search needs, checked before any stage writes a file."""
    from tunelab.search.space import validate_space, warn_about_unfair_rungs

    validate_space(config)
    warn_about_unfair_rungs(config)
    if not config.data.validation_size and not config.data.validation_file:
        raise TunelabError("search needs a validation split: set data.validation_size (e.g. 0.1) or "
                           "data.validation_file")


def check_model_and_trackers(config: TunelabConfig) -> None:
    """The model can be had, LoRA's targets are layers of it, the trackers are reachable: checked before
    any stage writes a file, so a typo is one line and not a failure after the data was prepared."""
    check_source(config.model)
    check_adapter_targets(config)
    check_trackers(config)


def prepare_run(config_path: Path, overrides: list[str], output_dir: Path | None) -> tuple[RunDir, dict[str, Any]]:
    """`tunelab prepare`: only the data stage, into RUN_DIR/data."""
    config, run_dir = load(config_path, overrides, output_dir)
    with removed_on_failure(run_dir.root):
        return run_dir, prepare(config, run_dir)


def search_run(config_path: Path, overrides: list[str], output_dir: Path | None) -> dict[str, Any]:
    """`tunelab search`: prepare (if needed), run or resume the study, export the winner."""
    config, run_dir = load(config_path, overrides, output_dir)
    check_search_settings(config)
    check_model_and_trackers(config)
    with removed_on_failure(run_dir.root):
        prepare(config, run_dir)
        return search(config, run_dir)


def train_run(config_path: Path, overrides: list[str], output_dir: Path | None,
              resume: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`tunelab train`: validate everything first (config, data, model path), then write the run and train;
    under `accelerate launch` the main process prepares the data and evaluates."""
    config, run_dir = load(config_path, overrides, output_dir)
    check_model_and_trackers(config)  # before any stage writes a file
    if resume:
        if not run_dir.split("train").is_file():
            raise TunelabError(f"{run_dir.root}: nothing to resume (no data/train.jsonl)")
        config = _same_config_as_run(config, run_dir)
    from accelerate import PartialState

    processes = PartialState()  # one process unless started by `accelerate launch` / torchrun
    with removed_on_failure(run_dir.root):
        if not resume:
            with processes.main_process_first():  # the others then find data/ prepared and skip it
                prepare(config, run_dir)
        summary = train(config, run_dir, resume)
    metrics = None
    if config.train.evaluate_after and processes.is_main_process:
        metrics = evaluate(config, run_dir)
    return summary, metrics


def _same_config_as_run(config: TunelabConfig, run_dir: RunDir) -> TunelabConfig:
    saved = config_from_run_dir(run_dir.root)
    if config_dump(saved) != config_dump(config):
        raise TunelabError(f"{run_dir.root}: --resume needs the config the run started with (it changed)")
    return saved


def evaluate_run(run_dir: Path, data_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """`tunelab evaluate`: score the run's model (and its base) on the test split or `data_file`."""
    return evaluate(config_from_run_dir(run_dir, overrides), RunDir(run_dir), data_file)


def compare_decodings(run_dir: Path, data_file: str | None, overrides: list[str],
                      strategies: list[str]) -> dict[str, dict[str, Any]]:
    """`tunelab evaluate --compare-decoding`: the tuned model scored with each decoding strategy on the
    same examples."""
    table = {}
    for strategy in strategies:
        config = config_from_run_dir(run_dir, [*overrides, f"evaluate.decoding.strategy={strategy}",
                                               "evaluate.compare_base=false"])
        table[strategy] = evaluate(config, RunDir(run_dir), data_file, write=False)["tuned"]
    write_json(RunDir(run_dir).eval / "decoding_comparison.json", table)
    return table


def export_run(run_dir: Path, fmt: str, overrides: list[str], quant: str | None = None) -> dict[str, Any]:
    """`tunelab export`: the tuned model for an inference engine, in RUN_DIR/export/FORMAT/."""
    from tunelab.export import export

    return export(config_from_run_dir(run_dir, overrides), RunDir(run_dir), fmt, quant)


def serve_app(run_dir: Path, overrides: list[str]):
    """The HTTP app for a run's tuned model, and the settings to serve it with. The engine: llama.cpp on the
    run's GGUF export when asked, or (auto) when llama.cpp is installed and the export exists; llama.cpp's
    own server (llama-server) on that export only when asked."""
    import importlib.util

    from tunelab.serve.app import create_app
    from tunelab.serve.engine import LlamaCppEngine, LlamaServerEngine, TransformersEngine, exported_gguf

    config = config_from_run_dir(run_dir, overrides)
    run = RunDir(run_dir)
    engine_name = config.serve.engine
    gguf = exported_gguf(run, config.serve.gguf) if engine_name != "transformers" else None
    if engine_name in ("llama.cpp", "llama-server") and gguf is None:
        raise TunelabError(f"serve.engine {engine_name}: {run.root} has no GGUF export (tunelab export {run.root} "
                           "-f gguf -q q8_0)")
    if engine_name == "llama-server":
        engine = LlamaServerEngine(config, run, gguf)
        log.info("serving %s with llama-server (%d slots)", gguf, config.serve.workers)
    elif gguf is not None and (engine_name == "llama.cpp" or importlib.util.find_spec("llama_cpp")):
        engine = LlamaCppEngine(config, run, gguf)
        log.info("serving %s with llama.cpp", gguf)
    else:
        engine = TransformersEngine(config, run)
        log.info("serving %s with transformers", run.model)
    return create_app(engine, Path(run_dir).resolve().name), config.serve


def publish_run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """`tunelab publish`: card and upload folder, then push and verify."""
    return publish(config_from_run_dir(run_dir, overrides), RunDir(run_dir))


# `tunelab run`: every stage not done with the same inputs.

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


TRACKING_KEYS = {"report_to", "mlflow_tracking_uri"}


def stage_hashes(config: TunelabConfig, trained: TunelabConfig | None = None) -> dict[str, str]:
    """What each stage's output depends on. `trained`: the config training uses (the search winner).

    Only settings that change a stage's output count: where a study is stored or training is tracked
    does not change it, and training does not read the answer budget, so changing those retrains nothing.
    """
    trained = trained or config
    hashes = {"prepare": input_hash(config)}
    # Search scores generated answers, so the answer budget is one of its inputs.
    hashes["search"] = digest(hashes["prepare"], config.model, config.train.model_dump(exclude=TRACKING_KEYS),
                              config.search.model_dump(exclude={"storage"}), config.evaluate.max_new_tokens)
    hashes["train"] = digest(hashes["prepare"], trained.model, trained.train.model_dump(exclude=TRACKING_KEYS))
    hashes["evaluate"] = digest(hashes["train"], config.evaluate)
    hashes["publish"] = digest(hashes["evaluate"], config.publish)
    return hashes


def run_pipeline(config: TunelabConfig, run_dir: RunDir, from_stage: str | None = None) -> dict[str, Any]:
    """Run every stage that is not done with the same inputs; return what each produced."""
    if from_stage and from_stage not in STAGES:
        raise TunelabError(f"--from {from_stage}: not a stage (stages: {', '.join(STAGES)})")
    if config.search.space:
        check_search_settings(config)
    check_model_and_trackers(config)
    forced = set(STAGES[STAGES.index(from_stage):]) if from_stage else set()
    outputs: dict[str, Any] = {"skipped": []}
    hashes = stage_hashes(config)
    with removed_on_failure(run_dir.root):  # bad input found while preparing leaves nothing behind
        run_dir.root.mkdir(parents=True, exist_ok=True)
        record = StageRecord(run_dir.root / "stages.json")
        _stage(record, "prepare", hashes["prepare"], "prepare" in forced, outputs,
               lambda resume: prepare(config, run_dir))

    if config.search.space:
        _stage(record, "search", hashes["search"], "search" in forced, outputs,
               lambda resume: search(config, run_dir))
        trained = load_config(run_dir.search / "best.yaml")
        trained.output_dir = config.output_dir
        hashes = stage_hashes(config, trained)
    else:
        record.mark("search", hashes["search"], "skipped")  # not configured: nothing to report as done before
        trained = config
    # Evaluation and publishing use this run's own settings for those stages on the trained model.
    final = trained.model_copy(update={"evaluate": config.evaluate, "publish": config.publish})
    _stage(record, "train", hashes["train"], "train" in forced, outputs,
           lambda resume: train(trained, run_dir, resume))
    _stage(record, "evaluate", hashes["evaluate"], "evaluate" in forced, outputs,
           lambda resume: evaluate(final, run_dir))
    _stage(record, "publish", hashes["publish"], "publish" in forced, outputs,
           lambda resume: publish(final, run_dir))
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

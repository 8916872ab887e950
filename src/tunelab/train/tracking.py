"""Experiment tracking through transformers' own integrations: TensorBoard event files, MLflow runs.

Off unless `train.report_to` names a tracker. Each training (`tunelab train`, and each search trial)
is one tracked run: transformers' `TensorBoardCallback` and `MLflowCallback` log its losses, learning
rate and settings; tunelab adds what they cannot know, a trial's searched values and its validation
score. Nothing leaves the machine unless configured: TensorBoard writes RUN_DIR/tensorboard/<run>,
MLflow a local database RUN_DIR/mlflow.db (its file store is retired) unless `train.mlflow_tracking_uri`
or MLFLOW_TRACKING_URI names a server.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig, redact_url
from tunelab.errors import TunelabError

PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}  # module, pip


def check_trackers(config: TunelabConfig) -> None:
    """Before anything is written: each named tracker's package is installed."""
    for tracker in config.train.report_to:
        module, package = PACKAGES[tracker]
        if importlib.util.find_spec(module) is None:
            raise TunelabError(f"train.report_to names {tracker}, which is not installed: "
                               f"pip install 'tunelab[tracking]' (or {package})")


def mlflow_uri(config: TunelabConfig, root: Path) -> str:
    return (config.train.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(root / 'mlflow.db').resolve()}")


class TrackedRun:
    """One tracked training run named `name`, its files kept under `root` (the run directory; a
    search's trials are runs of the search's directory). Use as a context manager; pass `callbacks`
    to the Trainer; `log_result` adds the searched values and the score when they are known.
    Only the main process of a distributed run tracks (transformers' callbacks do the same)."""

    def __init__(self, config: TunelabConfig, root: Path, name: str):
        self.config, self.root, self.name = config, root, name
        self.trackers = config.train.report_to if int(os.environ.get("RANK", "0")) == 0 else []
        self.callbacks: list[Any] = []
        self._writer = None

    def __enter__(self) -> TrackedRun:
        check_trackers(self.config)
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            self._writer = SummaryWriter(log_dir=str(self.root / "tensorboard" / self.name))
            self.callbacks.append(TensorBoardCallback(tb_writer=self._writer))
        if "mlflow" in self.trackers:
            import mlflow
            from transformers.integrations import MLflowCallback

            uri = mlflow_uri(self.config, self.root)
            mlflow.set_tracking_uri(uri)
            experiment = self.root.name
            try:
                if mlflow.get_experiment_by_name(experiment) is None:
                    mlflow.create_experiment(experiment, artifact_location=(self.root / "mlflow-artifacts").as_uri())
                mlflow.set_experiment(experiment)
                mlflow.start_run(run_name=self.name)  # MLflowCallback logs into the active run
            except Exception as exc:  # the tracking server's many failure types
                raise TunelabError(f"MLflow at {redact_url(uri)}: {str(exc).splitlines()[0]}") from None
            self.callbacks.append(MLflowCallback())
        return self

    def log_result(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """A trial's searched values and its scores: MLflow params and metrics, TensorBoard hparams."""
        if self._writer is not None:
            self._writer.add_hparams({k: _hparam(v) for k, v in params.items()}, metrics, run_name=".")
        if "mlflow" in self.trackers:
            import mlflow

            mlflow.log_params(params)
            mlflow.log_metrics(metrics)

    def __exit__(self, kind, error, traceback) -> None:
        if self._writer is not None:
            self._writer.close()
        if "mlflow" in self.trackers:
            import mlflow

            # a pruned trial stopped early on purpose: KILLED, not FAILED
            stopped = kind is not None and kind.__name__ == "TrialPruned"
            mlflow.end_run(status="FINISHED" if kind is None else "KILLED" if stopped else "FAILED")


def _hparam(value: Any) -> Any:
    """TensorBoard's hparams take numbers, strings and booleans."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)

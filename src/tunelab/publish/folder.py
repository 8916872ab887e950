"""What gets uploaded: weights (adapter, or merged full weights), tokenizer, card, metrics, plots.

The folder is built in the run directory (publish/), so a dry run shows exactly what a push would
upload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.config import TunelabConfig
from tunelab.model.files import MODEL_FILES, copy_present, save_merged
from tunelab.model.source import base_model_name
from tunelab.publish.card import model_card
from tunelab.rundir import RunDir, staged_directory


def _pictures(run_dir: RunDir) -> list[Path]:
    candidates = [run_dir.model / "loss.png", *sorted(run_dir.eval.glob("confusion_*.png")),
                  run_dir.data / "clusters.png", run_dir.search / "metric_vs_lr.png"]
    return [path for path in candidates if path.is_file()]


def _point_adapter_at_base(config: TunelabConfig, folder: Path) -> None:
    """The adapter names the base by its Hub id (not this machine's cache path), so
    `AutoPeftModelForCausalLM.from_pretrained(repo)` works for whoever downloads it."""
    path = folder / "adapter_config.json"
    if path.is_file():
        adapter = json.loads(path.read_text())
        adapter["base_model_name_or_path"] = base_model_name(config.model)
        path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")


def build_folder(config: TunelabConfig, run_dir: RunDir, repo_id: str, merged: bool,
                 license_id: str | None) -> Path:
    target = run_dir.root / "publish"
    with staged_directory(target) as folder:
        if merged and config.train.method != "full":
            save_merged(config.model, run_dir.model, folder)
        else:
            copy_present(MODEL_FILES, run_dir.model, folder)
            _point_adapter_at_base(config, folder)
        copy_present(["metrics.json"], run_dir.eval, folder)
        pictures = _pictures(run_dir)
        for picture in pictures:
            shutil.copy2(picture, folder / picture.name)
        model_card(config, run_dir, repo_id, merged, license_id, [p.name for p in pictures]).save(folder / "README.md")
    return target

"""Publish stage: model card, upload folder, push to a Hugging Face Hub-compatible endpoint."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import TunelabConfig
from tunelab.rundir import RunDir


def publish(config: TunelabConfig, run_dir: RunDir) -> dict:
    """Build publish/ (always) and push it unless this is a dry run; return what was done."""
    from tunelab.publish.folder import build_folder

    settings = config.publish
    dry_run = settings.dry_run or not settings.repo_id
    repo_id = settings.repo_id or f"local/{Path(config.output_dir).name}"
    folder = build_folder(config, run_dir, repo_id, settings.merged, settings.license)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if dry_run:
        return {"dry_run": True, "folder": str(folder), "files": files, "repo_id": repo_id}
    from tunelab.publish.push import push_folder

    return {"dry_run": False, "folder": str(folder), "files": files, "repo_id": repo_id,
            "url": push_folder(folder, repo_id, settings.private)}

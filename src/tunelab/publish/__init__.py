"""Publish stage: model card, upload folder, push to a Hugging Face Hub-compatible endpoint, verify."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import TunelabConfig
from tunelab.errors import TunelabError
from tunelab.model.source import base_model_id
from tunelab.rundir import RunDir


def publish(config: TunelabConfig, run_dir: RunDir) -> dict:
    """Build publish/ (always); push it and check the download unless this is a dry run."""
    from tunelab.publish.folder import build_folder

    settings = config.publish
    dry_run = settings.dry_run or not settings.repo_id
    repo_id = settings.repo_id or f"local/{Path(config.output_dir).name}"
    adapter_only = config.train.method != "full" and not settings.merged
    if adapter_only and not dry_run and base_model_id(config.model) is None:
        raise TunelabError(f"the base model is a local copy ({config.model.name_or_path}): an adapter pushed to the "
                           "Hub must name the base by its Hub id: set model.hub_id, or publish merged weights "
                           "(--merged)")
    folder = build_folder(config, run_dir, repo_id, settings.merged, settings.license)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    result = {"dry_run": dry_run, "folder": str(folder), "files": files, "repo_id": repo_id}
    if dry_run:
        return result
    from tunelab.publish.push import push_folder

    pushed = push_folder(folder, repo_id, settings.private, settings.allow_public)
    result |= {"url": pushed.url, "commit": pushed.commit}
    if settings.verify:
        from tunelab.publish.verify import verify_push

        result["verified"] = verify_push(config, run_dir, folder, repo_id, pushed.commit)
    return result

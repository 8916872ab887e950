"""Check a push end to end: download the repo back, load it with plain transformers/peft, and ask it
the first test prompts of eval/predictions.jsonl.

The reference is what the evaluation recorded, not the folder just uploaded: the check covers the
transfer (every file byte-identical to publish/) and that the uploaded files alone make the model
that was scored. The prompts are generated in the evaluation's batches with its decoding, answer
budget and label constraint, so a correct upload reproduces the answers exactly.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from tunelab.config import TunelabConfig
from tunelab.errors import TunelabError
from tunelab.evaluate.replay import first_difference, recorded_answers, replayed_answers
from tunelab.rundir import RunDir

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:  # streamed: merged weights can be several GB
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p)
            for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts}


def load_published(config: TunelabConfig, folder: Path):
    """A published folder as a user loads it: full weights directly, an adapter onto the base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not (folder / "adapter_config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder), tokenizer
    from tunelab.model.adapters import load_adapter

    return load_adapter(config.model, folder, quantize_4bit=config.train.method == "qlora"), tokenizer


def verify_push(config: TunelabConfig, run_dir: RunDir, folder: Path, repo_id: str, revision: str) -> dict:
    """Download `repo_id` at `revision`; raise if a file differs from publish/ or a test prompt gets
    another answer than the evaluation recorded."""
    from huggingface_hub import snapshot_download

    examples, predictions = recorded_answers(config, run_dir, config.publish.verify_prompts, "verify the push")
    with tempfile.TemporaryDirectory(prefix="tunelab-verify-") as scratch:
        downloaded = Path(snapshot_download(repo_id, revision=revision, local_dir=Path(scratch) / "repo",
                                            cache_dir=Path(scratch) / "cache"))
        local, remote = _digests(folder), _digests(downloaded)
        differing = sorted(name for name in local.keys() | remote.keys() if local.get(name) != remote.get(name))
        if differing:
            raise TunelabError(f"verify {repo_id}: downloaded files differ from publish/: {', '.join(differing)}")
        model, tokenizer = load_published(config, downloaded)
        received = replayed_answers(model, tokenizer, config, run_dir, examples, "downloaded")
    changed = first_difference(predictions, received)
    if changed:
        number, recorded, got = changed
        raise TunelabError(f"verify {repo_id}: test prompt {number} answered {got!r} after download, "
                           f"{recorded!r} in eval/predictions.jsonl")
    log.info("verified %s: %d files identical, %d test prompts answered as in eval/predictions.jsonl", repo_id,
             len(local), len(received))
    return {"files": len(local), "prompts": len(received), "answers": received}

"""Check a push end to end: download the repo back, load it with plain transformers/peft, compare answers.

The reference is the local publish/ folder loaded the same way, so the check covers both the transfer
(every file byte-identical) and that the uploaded files alone make a working model.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import generate_answers
from tunelab.rundir import RunDir, read_jsonl

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


def _answers(config: TunelabConfig, folder: Path, examples: list[dict], label: str) -> list[str]:
    model, tokenizer = load_published(config, folder)
    model.eval()
    return generate_answers(model, tokenizer, examples, config.evaluate.max_new_tokens, 1, label,
                            DecodingConfig())


def verify_push(config: TunelabConfig, run_dir: RunDir, folder: Path, repo_id: str, revision: str) -> dict:
    """Download `repo_id` at `revision`; raise if a file differs or a test prompt gets another answer."""
    from huggingface_hub import snapshot_download

    examples = read_jsonl(run_dir.split("test"))[: config.publish.verify_prompts]
    with tempfile.TemporaryDirectory(prefix="tunelab-verify-") as scratch:
        downloaded = Path(snapshot_download(repo_id, revision=revision, local_dir=Path(scratch) / "repo",
                                            cache_dir=Path(scratch) / "cache"))
        local, remote = _digests(folder), _digests(downloaded)
        differing = sorted(name for name in local.keys() | remote.keys() if local.get(name) != remote.get(name))
        if differing:
            raise TunelabError(f"verify {repo_id}: downloaded files differ from publish/: {', '.join(differing)}")
        expected = _answers(config, folder, examples, "local")
        received = _answers(config, downloaded, examples, "downloaded")
    for number, (want, got) in enumerate(zip(expected, received, strict=True), start=1):
        if want != got:
            raise TunelabError(f"verify {repo_id}: test prompt {number} answered {got!r} after download, "
                               f"{want!r} locally")
    log.info("verified %s: %d files identical, %d test prompts answered the same", repo_id, len(local),
             len(examples))
    return {"files": len(local), "prompts": len(examples), "answers": received}

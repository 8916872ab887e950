"""Check a push end to end: download the repo back, load it with plain transformers/peft, and ask it
the first test prompts of eval/predictions.jsonl.

The reference is what the evaluation recorded, not the folder just uploaded: the check covers the
transfer (every file byte-identical to publish/) and that the uploaded files alone make the model
that was scored. The prompts are generated in the evaluation's batches with its decoding, answer
budget and label constraint, so a correct upload reproduces the answers exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.data.labels import known_labels
from tunelab.errors import TunelabError
from tunelab.evaluate.constrain import LabelTrie
from tunelab.evaluate.generation import generate_answers
from tunelab.evaluate.scoring import extract_answer
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


def recorded_answers(config: TunelabConfig, run_dir: RunDir) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the evaluation's first batches of test examples, their predictions) covering `verify_prompts`."""
    predictions_path = run_dir.eval / "predictions.jsonl"
    if not predictions_path.is_file():
        raise TunelabError(f"{run_dir.root}: no eval/predictions.jsonl to verify the push against "
                           "(run `tunelab evaluate` first)")
    batch = config.evaluate.batch_size
    predictions = read_jsonl(predictions_path)
    predictions = predictions[: math.ceil(config.publish.verify_prompts / batch) * batch]
    test = {example.get("id"): example for example in read_jsonl(run_dir.split("test"))}
    return [test[row["id"]] for row in predictions], predictions


def _answers(config: TunelabConfig, run_dir: RunDir, folder: Path, examples: list[dict]) -> list[str]:
    metrics = json.loads((run_dir.eval / "metrics.json").read_text())
    model, tokenizer = load_published(config, folder)
    model.eval()
    labels = known_labels(run_dir, examples) if metrics.get("constrained_to_labels") else None
    constraint = LabelTrie(tokenizer, labels, config.data.system_prompt) if labels else None
    texts = generate_answers(model, tokenizer, examples, metrics["max_new_tokens"], config.evaluate.batch_size,
                             "downloaded", DecodingConfig(**metrics["decoding"]), constraint)
    return [extract_answer(text) for text in texts]


def verify_push(config: TunelabConfig, run_dir: RunDir, folder: Path, repo_id: str, revision: str) -> dict:
    """Download `repo_id` at `revision`; raise if a file differs from publish/ or a test prompt gets
    another answer than the evaluation recorded."""
    from huggingface_hub import snapshot_download

    examples, predictions = recorded_answers(config, run_dir)
    with tempfile.TemporaryDirectory(prefix="tunelab-verify-") as scratch:
        downloaded = Path(snapshot_download(repo_id, revision=revision, local_dir=Path(scratch) / "repo",
                                            cache_dir=Path(scratch) / "cache"))
        local, remote = _digests(folder), _digests(downloaded)
        differing = sorted(name for name in local.keys() | remote.keys() if local.get(name) != remote.get(name))
        if differing:
            raise TunelabError(f"verify {repo_id}: downloaded files differ from publish/: {', '.join(differing)}")
        received = _answers(config, run_dir, downloaded, examples)
    for number, (row, got) in enumerate(zip(predictions, received, strict=True), start=1):
        if row["tuned_answer"] != got:
            raise TunelabError(f"verify {repo_id}: test prompt {number} answered {got!r} after download, "
                               f"{row['tuned_answer']!r} in eval/predictions.jsonl")
    log.info("verified %s: %d files identical, %d test prompts answered as in eval/predictions.jsonl", repo_id,
             len(local), len(received))
    return {"files": len(local), "prompts": len(received), "answers": received}

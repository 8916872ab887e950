"""Merged export: full weights any transformers user loads, checked against the evaluation's answers."""

from __future__ import annotations

import logging
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.errors import TunelabError
from tunelab.evaluate.replay import first_difference, recorded_answers, replayed_answers
from tunelab.model.files import MODEL_FILES, copy_present, save_merged
from tunelab.model.source import base_model_name
from tunelab.rundir import RunDir, staged_directory, write_json

log = logging.getLogger(__name__)


def write_merged_weights(config: TunelabConfig, run_dir: RunDir, folder) -> None:
    """The tuned model as one full-weight model directory with its tokenizer (LoRA folded in)."""
    if config.train.method == "full":
        copy_present(MODEL_FILES, run_dir.model, folder)
    else:
        save_merged(config.model, run_dir.model, folder)


def export_merged(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    destination = run_dir.export("merged")
    examples, predictions = recorded_answers(config, run_dir, config.publish.verify_prompts, "verify the export")
    with staged_directory(destination) as folder:
        write_merged_weights(config, run_dir, folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        answers = replayed_answers(model, AutoTokenizer.from_pretrained(folder), config, run_dir, examples, "merged")
        changed = first_difference(predictions, answers)
        if changed:
            number, recorded, got = changed
            raise TunelabError(f"merged export: test prompt {number} answered {got!r}, {recorded!r} in "
                               "eval/predictions.jsonl (the merged weights do not compute what was evaluated)")
        record = {"format": "merged", "base_model": base_model_name(config.model), "method": config.train.method,
                  "dtype": "float32", "load": "AutoModelForCausalLM.from_pretrained(FOLDER)",
                  "verified": {"engine": "transformers", "prompts": len(answers),
                               "same_answers_as_eval": len(answers)}}
        write_json(folder / "export.json", record)
    log.info("merged export: %s (%d test prompts answered as in eval/predictions.jsonl)", destination, len(answers))
    return record | {"folder": str(destination)}

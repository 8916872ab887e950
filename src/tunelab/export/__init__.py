"""Export stage: the tuned model in the form an inference engine loads, checked where it can run here.

`merged`: the adapter folded into full weights with the run's tokenizer and chat template, loadable
with plain `AutoModelForCausalLM`; verified by asking it the evaluation's first test prompts, which
must get exactly the answers of eval/predictions.jsonl. `vllm`: the adapter (or merged weights) and
a launch script for `vllm serve` on a GPU machine; written and documented, not run here. `gguf`:
llama.cpp's converter and quantizer, the f16 file checked by llama.cpp against eval/predictions.jsonl,
a quantized one's agreement rate on the test split measured. `ollama`: a GGUF file (q8_0 unless
asked otherwise) and a Modelfile whose ChatML template is checked against the run's own.
`container`: a Docker build context serving a copy of the run (no training data) on llama.cpp, with
the `gcloud ai` commands for a Vertex AI endpoint.
Each export lands in RUN_DIR/export/FORMAT/ with an export.json saying what it is and how it was
checked.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import TunelabConfig
from tunelab.errors import TunelabError
from tunelab.rundir import RunDir

FORMATS = ("merged", "gguf", "ollama", "vllm", "container")


def export(config: TunelabConfig, run_dir: RunDir, fmt: str, quant: str | None = None) -> dict[str, Any]:
    """Write RUN_DIR/export/FMT/ and return its export.json. `quant`: the GGUF type (gguf: f16 and this;
    ollama: this one, default q8_0)."""
    if fmt not in FORMATS:
        raise TunelabError(f"--format {fmt}: not an export format (formats: {', '.join(FORMATS)})")
    if not (run_dir.model / "config.json").is_file() and not (run_dir.model / "adapter_config.json").is_file():
        raise TunelabError(f"{run_dir.root}: no trained model in model/ (run `tunelab train` first)")
    if fmt == "merged":
        from tunelab.export.merged import export_merged

        return export_merged(config, run_dir)
    if fmt == "gguf":
        from tunelab.export.gguf import export_gguf

        return export_gguf(config, run_dir, quant or "f16")
    if fmt == "ollama":
        from tunelab.export.ollama import export_ollama

        return export_ollama(config, run_dir, quant or "q8_0")
    if fmt == "container":
        from tunelab.export.container import export_container

        return export_container(config, run_dir, quant or "q8_0")
    from tunelab.export.vllm import export_vllm

    return export_vllm(config, run_dir)

"""vLLM export: what a GPU machine needs to serve the tuned model with `vllm serve`.

A LoRA run ships its adapter, served on the base model by its Hub id (`--enable-lora
--lora-modules`); a full fine-tune, or a base known only by a local path, ships full weights.
vLLM needs a GPU, so this export is written and documented, not run here.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.labels import known_labels
from tunelab.model.files import MODEL_FILES, TOKENIZER_FILES, WEIGHT_FILES, copy_present, save_merged
from tunelab.model.source import base_model_id
from tunelab.rundir import RunDir, make_executable, staged_directory, write_json, write_text_atomic

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts
SHOWN_LABELS = 20  # labels written into the README's example request (all are in labels.json)


def export_vllm(config: TunelabConfig, run_dir: RunDir) -> dict[str, Any]:
    destination = run_dir.export("vllm")
    name = run_dir.root.resolve().name
    base = base_model_id(config.model)
    as_adapter = config.train.method != "full" and base is not None
    labels = known_labels(run_dir, []) if config.data.label_column else []
    with staged_directory(destination) as folder:
        if as_adapter:
            (folder / "adapter").mkdir()
            copy_present(WEIGHT_FILES + TOKENIZER_FILES, run_dir.model, folder / "adapter")
            rank = next(r for r in LORA_RANKS if r >= config.train.lora.r)
            command = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}=$HERE/adapter",
                       "--max-lora-rank", str(rank)]
            chat_template = folder / "adapter" / "chat_template.jinja"
        else:
            (folder / "model").mkdir()
            if config.train.method == "full":
                copy_present(MODEL_FILES, run_dir.model, folder / "model")
            else:  # a local base means nothing on another machine: ship the merged weights
                save_merged(config.model, run_dir.model, folder / "model")
            command = ["vllm", "serve", "$HERE/model", "--served-model-name", name]
            chat_template = folder / "model" / "chat_template.jinja"
        if chat_template.is_file():  # the template training rendered prompts with
            command += ["--chat-template", f"$HERE/{chat_template.relative_to(folder)}"]
        command += ["--host", "${HOST:-0.0.0.0}", "--port", "${PORT:-8000}"]
        write_text_atomic(folder / "serve.sh", _script(command))
        if labels:
            write_json(folder / "labels.json", labels)
        write_text_atomic(folder / "README.md", _readme(name, config, labels, as_adapter, base))
        record = {"format": "vllm", "served_model_name": name, "mode": "lora" if as_adapter else "weights",
                  "base_model": base, "command": " ".join(command),
                  "verified": None, "note": "vLLM needs a GPU: this export is written, not run, here"}
        write_json(folder / "export.json", record)
    make_executable(destination / "serve.sh")
    return record | {"folder": str(destination)}


def _script(command: list[str]) -> str:
    def quoted(part: str) -> str:  # keep $HERE and ${PORT:-8000} for the shell to expand
        return f'"{part}"' if "$" in part else shlex.quote(part)

    return ("#!/usr/bin/env bash\n# Serve the tuned model with vLLM on a GPU machine (pip install vllm). "
            "Written by `tunelab export --format vllm`.\nset -euo pipefail\n"
            'HERE="$(cd "$(dirname "$0")" && pwd)"\n'
            f"exec {' '.join(quoted(part) for part in command)} \"$@\"\n")


def _readme(name: str, config: TunelabConfig, labels: list[str], as_adapter: bool, base: str | None) -> str:
    system = config.data.system_prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "..."}]
    request = {"model": name, "messages": messages, "temperature": 0, "max_tokens": 32}
    if 0 < len(labels) <= SHOWN_LABELS:  # vLLM's structured outputs: answers restricted to the labels
        request["guided_choice"] = labels
    what = (f"the LoRA adapter in `adapter/`, on `{base}` (downloaded by vLLM)" if as_adapter else
            "full weights in `model/`")
    return f"""# {name} for vLLM

`./serve.sh` starts an OpenAI-compatible server (`pip install vllm` on a GPU machine) with {what}.
Set `PORT`/`HOST` to move it; extra arguments go to `vllm serve`.

```bash
curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(request)}'
```
{"" if not labels else '''
`labels.json` lists the answers the model was trained and evaluated on; passing them as
`guided_choice` (vLLM's structured outputs) restricts answers to them, as tunelab's evaluation did.
'''}"""

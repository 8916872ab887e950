"""Ollama export: a GGUF file of the GGUF export (made first if missing) and a Modelfile.

The Modelfile holds the run's system prompt, greedy decoding, the end-of-turn stop token and, for
ChatML templates (Qwen, SmolLM2 and kin), Ollama's ChatML TEMPLATE, written only after checking that
it renders exactly the prompt the run's own chat template renders; for other templates Ollama takes
the template from the GGUF metadata, where the converter put it. Ollama cannot run here: the folder
is checked, not served.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.chat import render_prompt
from tunelab.data.labels import known_labels
from tunelab.export.gguf import exported_file, place
from tunelab.rundir import RunDir, staged_directory, write_json, write_text_atomic

log = logging.getLogger(__name__)

# Ollama's ChatML template (Go text/template over .Messages; SYSTEM arrives as the first message).
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")


def chatml_prompt(messages: list[dict[str, str]]) -> str:
    """What CHATML_TEMPLATE renders for these messages (it has no other logic than this loop)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def template_for(tokenizer, system_prompt: str | None) -> str | None:
    """CHATML_TEMPLATE when it renders the run's prompt exactly (its system prompt, then a user turn)."""
    probe = [{"role": "system", "content": system_prompt}] if system_prompt else []
    probe.append({"role": "user", "content": "I sneeze and my eyes itch."})
    return CHATML_TEMPLATE if chatml_prompt(probe) == render_prompt(tokenizer, probe) else None


def _quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def export_ollama(config: TunelabConfig, run_dir: RunDir, quant: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    source, record = exported_file(config, run_dir, quant)
    tokenizer = AutoTokenizer.from_pretrained(run_dir.model)
    system = config.data.system_prompt
    template = template_for(tokenizer, system)
    stop = tokenizer.eos_token
    lines = [f"# tunelab export of {run_dir.root.name}: {record['base_model']} tuned with {record['method']}; "
             f"checked by llama.cpp (see export.json)", f"FROM ./{source.name}"]
    if template:
        lines.append(f"TEMPLATE {_quoted(template)}")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{stop}"', "PARAMETER temperature 0", "PARAMETER num_ctx 4096"]
    labels = known_labels(run_dir, []) if config.data.label_column else []
    name = run_dir.root.name.lower()
    destination = run_dir.export("ollama")
    with staged_directory(destination) as folder:
        place(source, folder / source.name)
        write_text_atomic(folder / "Modelfile", "\n".join(lines) + "\n")
        if labels:
            write_json(folder / "labels.json", labels)
        write_text_atomic(folder / "README.md", _readme(name, labels, template is not None))
        result = {"format": "ollama", "gguf": source.name, "quant": quant,
                  "template": "ChatML, checked against the run's chat template" if template
                  else "from the GGUF metadata (not ChatML)", "stop": stop, "system_prompt": system,
                  "verified": None, "note": "Ollama cannot run here: the GGUF was checked by llama.cpp "
                                            "(export/gguf/export.json); run `ollama create` where Ollama is installed"}
        write_json(folder / "export.json", result)
    log.info("ollama export: %s (ollama create %s -f %s/Modelfile)", destination, name, destination)
    return result | {"folder": str(destination)}


def _readme(name: str, labels: list[str], chatml: bool) -> str:
    template = ("ChatML, checked to render the run's prompts exactly" if chatml
                else "read by Ollama from the GGUF metadata")
    text = (f"# {name} for Ollama\n\n```bash\nollama create {name} -f Modelfile\nollama run {name} \"...\"\n```\n\n"
            "The Modelfile sets the run's system prompt, greedy decoding and the end-of-turn stop token; the chat "
            f"template is {template}.\n")
    if labels:
        schema = json.dumps({"type": "string", "enum": labels})
        text += ("\nFor a label task, restrict answers to the labels with Ollama's structured output (the answer\n"
                 f"then comes as a JSON string):\n\n```bash\ncurl http://localhost:11434/api/chat -d "
                 f"'{{\"model\": \"{name}\", \"stream\": false, \"format\": {schema}, \"messages\": "
                 "[{\"role\": \"user\", \"content\": \"...\"}]}'\n```\n")
    return text

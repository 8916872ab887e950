"""GGUF export for llama.cpp (laptops, CPUs, Ollama): llama.cpp's own converter and quantizer, checked by
llama.cpp itself.

The merged weights go through `convert_hf_to_gguf.py` of the llama.cpp that llama-cpp-python was
built from (`make setup` unpacks it into the venv), which writes the tokenizer, the chat template and
the end-of-turn token into the GGUF metadata; q8_0 / q4_k_m come from llama.cpp's quantizer
(`llama_model_quantize`). The f16 file is loaded back by llama.cpp and asked the evaluation's first
test prompts, which must get exactly the answers of eval/predictions.jsonl; a quantized file is asked
every test prompt and its agreement rate is recorded. Label tasks answer under a llama.cpp grammar of
the labels, the counterpart of the evaluation's token trie.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.chat import opens_thinking, prompt_ids
from tunelab.data.examples import prompt_messages
from tunelab.data.labels import known_labels
from tunelab.errors import TunelabError
from tunelab.evaluate.replay import recorded_answers
from tunelab.evaluate.scoring import extract_answer
from tunelab.export.merged import write_merged_weights
from tunelab.model.llama_cpp import compiled_grammar, gguf_metadata, label_grammar, llama_cpp_module, open_gguf
from tunelab.model.source import base_model_name
from tunelab.progress import progress_bar
from tunelab.rundir import RunDir, read_jsonl, staged_directory, write_json

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0", "q4_k_m")
CONVERTER_ENV = "TUNELAB_LLAMA_CPP"  # a llama.cpp checkout holding convert_hf_to_gguf.py


def converter_script() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: TUNELAB_LLAMA_CPP, else the copy `make setup` unpacked."""
    folders = [Path(os.environ[CONVERTER_ENV])] if os.environ.get(CONVERTER_ENV) else []
    folders.append(Path(sys.prefix) / "share" / "tunelab" / "llama.cpp")
    for folder in folders:
        if (folder / "convert_hf_to_gguf.py").is_file():
            return folder / "convert_hf_to_gguf.py"
    raise TunelabError(f"GGUF export needs llama.cpp's convert_hf_to_gguf.py: run `make llama-cpp`, or set "
                       f"{CONVERTER_ENV} to a llama.cpp checkout")


def convert(hf_folder: Path, outfile: Path) -> None:
    done = subprocess.run([sys.executable, str(converter_script()), str(hf_folder), "--outfile", str(outfile),
                           "--outtype", "f16"], capture_output=True, text=True)
    if done.returncode:
        reason = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
        raise TunelabError(f"llama.cpp's converter failed on the merged model: {reason[0]}")


def quantize(source: Path, destination: Path, quant: str) -> None:
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    if llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params)):
        raise TunelabError(f"llama.cpp could not quantize {source.name} to {quant}")


def gguf_answers(path: Path, tokenizer, examples: list[dict[str, Any]], labels: list[str] | None,
                 max_new_tokens: int, threads: int | None, label: str) -> list[str]:
    """llama.cpp's greedy answers to the examples' prompts, rendered by the run's own chat template
    (token for token the evaluation's prompts), under the label grammar when answers are labels."""
    prompts = [prompt_ids(tokenizer, prompt_messages(e)) for e in examples]
    model = open_gguf(path, max(map(len, prompts)) + max_new_tokens + 8, threads)
    grammar = compiled_grammar(label_grammar(labels) if labels else None)
    answers = []
    with progress_bar() as shown:
        task = shown.add_task(f"asking the GGUF ({label})", total=len(prompts))
        for prompt in prompts:
            done = model.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1,
                                           grammar=grammar)
            answers.append(extract_answer(done["choices"][0]["text"]))
            shown.advance(task)
    return answers


def export_gguf(config: TunelabConfig, run_dir: RunDir, quant: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    if quant not in QUANTS:
        raise TunelabError(f"--quant {quant}: not a GGUF type tunelab writes (types: {', '.join(QUANTS)})")
    converter_script()
    llama_cpp_module()
    examples, predictions = recorded_answers(config, run_dir, config.publish.verify_prompts, "verify the export")
    metrics = json.loads((run_dir.eval / "metrics.json").read_text())
    destination = run_dir.export("gguf")
    with staged_directory(destination) as folder:
        merged = folder / "merged"
        write_merged_weights(config, run_dir, merged)
        tokenizer = AutoTokenizer.from_pretrained(merged)
        files = {"f16": folder / "model-f16.gguf"}
        started = time.perf_counter()
        convert(merged, files["f16"])
        if quant != "f16":
            files[quant] = folder / f"model-{quant}.gguf"
            quantize(files["f16"], files[quant], quant)
        converted_s = time.perf_counter() - started
        header = gguf_metadata(files["f16"])
        thinking = opens_thinking(tokenizer)
        labels = (known_labels(run_dir, examples) if metrics.get("constrained_to_labels") and not thinking
                  else None)
        budget, threads = metrics["max_new_tokens"], config.train.num_threads
        answers = gguf_answers(files["f16"], tokenizer, examples, labels, budget, threads, "f16")
        for number, (row, answer) in enumerate(zip(predictions, answers, strict=True), start=1):
            if row["tuned_answer"] != answer:
                raise TunelabError(f"GGUF export (f16): test prompt {number} answered {answer!r}, "
                                   f"{row['tuned_answer']!r} in eval/predictions.jsonl (llama.cpp does not compute "
                                   "what was evaluated)")
        agreement = {}
        if quant != "f16":
            everything = read_jsonl(run_dir.eval / "predictions.jsonl")
            test = {example.get("id"): example for example in read_jsonl(run_dir.split("test"))}
            rows = [test[row["id"]] for row in everything]
            quantized = gguf_answers(files[quant], tokenizer, rows, labels, budget, threads, quant)
            same = sum(row["tuned_answer"] == answer for row, answer in zip(everything, quantized, strict=True))
            gold = sum(row["gold"] == answer for row, answer in zip(everything, quantized, strict=True))
            agreement[quant] = {"test_rows": len(rows), "same_answers_as_eval": same,
                                "rate": round(same / len(rows), 4), "accuracy": round(gold / len(rows), 4)}
        for path in merged.iterdir():
            path.unlink()
        merged.rmdir()
        record = {
            "format": "gguf", "base_model": base_model_name(config.model), "method": config.train.method,
            "files": {name: {"file": path.name, "bytes": path.stat().st_size} for name, path in files.items()},
            "converted_in_s": round(converted_s, 1),
            "metadata": {"architecture": header["architecture"],
                         "chat_template_in_metadata": header["chat_template"] == tokenizer.chat_template,
                         "eos_token": tokenizer.convert_ids_to_tokens(int(header["eos_token_id"]))},
            "answers": "constrained by a llama.cpp grammar of the labels" if labels else "free",
            "verified": {"engine": f"llama.cpp (llama-cpp-python {llama_cpp_module().__version__})",
                         "prompts": len(answers), "same_answers_as_eval": len(answers), "agreement": agreement},
            "load": "llama_cpp.Llama(FILE) / llama-server -m FILE / ollama create -f Modelfile",
        }
        write_json(folder / "export.json", record)
    log.info("GGUF export: %s (f16 answers %d test prompts as in eval/predictions.jsonl%s)", destination,
             len(answers), "".join(f"; {q} agrees on {a['rate']:.1%} of {a['test_rows']} test rows"
                                   for q, a in agreement.items()))
    return record | {"folder": str(destination)}


def exported_file(config: TunelabConfig, run_dir: RunDir, quant: str) -> tuple[Path, dict[str, Any]]:
    """The `quant` GGUF of RUN_DIR/export/gguf/ and that export's record, exporting (and checking) it first
    when it is not there: what the Ollama and container exports ship."""
    record_path = run_dir.export("gguf") / "export.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if quant not in record.get("files", {}):
        record = {key: value for key, value in export_gguf(config, run_dir, quant).items() if key != "folder"}
    return record_path.parent / record["files"][quant]["file"], record


def place(source: Path, destination: Path) -> None:
    """`source` at `destination` without a second copy on disk where a hard link can do it."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)

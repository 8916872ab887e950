"""`tunelab export`: merged weights and GGUF files checked against the evaluation, the vLLM launch folder."""

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

TUNELAB = [sys.executable, "-m", "tunelab"]


def test_merged_export_loads_with_plain_transformers_and_answers_as_evaluated(trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config import config_from_run_dir
    from tunelab.evaluate.replay import recorded_answers, replayed_answers
    from tunelab.rundir import RunDir

    done = subprocess.run([*TUNELAB, "export", str(trained_run), "--format", "merged"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = trained_run / "export" / "merged"
    assert "test prompts answered as in eval/predictions.jsonl (transformers)" in done.stderr
    record = json.loads((folder / "export.json").read_text())
    assert record["verified"]["same_answers_as_eval"] == record["verified"]["prompts"] > 0
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not (folder / "adapter_config.json").exists()
    # Independently of the export's own check: every test row answered as the evaluation recorded.
    config = config_from_run_dir(trained_run)
    run_dir = RunDir(trained_run)
    examples, predictions = recorded_answers(config, run_dir, 10**6, "check")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert replayed_answers(model, tokenizer, config, run_dir, examples, "merged") == [
        row["tuned_answer"] for row in predictions]


def test_a_fully_fine_tuned_run_s_weights_are_written_into_a_new_folder(tmp_path, label_csv, tiny_model_dir):
    """A full fine-tune has nothing to merge: its own files go to the export's folder, which the GGUF
    export names before anything is in it (it failed with FileNotFoundError there)."""
    import torch
    from safetensors.torch import load_file

    from conftest import write_config
    from tunelab.config import load_config
    from tunelab.data.prepare import prepare_stage
    from tunelab.export.merged import write_merged_weights
    from tunelab.rundir import RunDir
    from tunelab.train.trainer import run_training

    config = load_config(write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir,
                                      train={"method": "full", "max_steps": 1}))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    run_training(config, run_dir)
    folder = tmp_path / "staged" / "merged"
    write_merged_weights(config, run_dir, folder)
    written, trained = load_file(folder / "model.safetensors"), load_file(run_dir.model / "model.safetensors")
    assert written.keys() == trained.keys() and all(torch.equal(written[k], trained[k]) for k in trained)
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()


def test_vllm_export_serves_the_adapter_on_the_base_hub_id(trained_run):
    result = CliRunner().invoke(app, ["export", str(trained_run), "--format", "vllm",
                                      "--set", "model.hub_id=alice/tiny-base"])
    assert result.exit_code == 0, result.output
    folder = trained_run / "export" / "vllm"
    script = (folder / "serve.sh").read_text()
    assert 'exec vllm serve alice/tiny-base --enable-lora --lora-modules "run=$HERE/adapter"' in script
    assert "--max-lora-rank 8" in script and '--chat-template "$HERE/adapter/chat_template.jinja"' in script
    assert subprocess.run(["bash", "-n", str(folder / "serve.sh")]).returncode == 0
    assert (folder / "serve.sh").stat().st_mode & 0o111
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {
        p.name for p in (folder / "adapter").iterdir()}
    labels = json.loads((folder / "labels.json").read_text())
    assert labels == sorted(labels) and "Flu" in labels
    readme = (folder / "README.md").read_text()
    assert '"guided_choice": ["Eczema", "Flu", "Migraine"]' in readme
    assert json.loads((folder / "export.json").read_text())["verified"] is None


def test_vllm_export_of_a_base_known_only_by_a_local_path_ships_full_weights(trained_run):
    result = CliRunner().invoke(app, ["export", str(trained_run), "--format", "vllm"])
    assert result.exit_code == 0, result.output
    folder = trained_run / "export" / "vllm"
    assert 'exec vllm serve "$HERE/model" --served-model-name run' in (folder / "serve.sh").read_text()
    assert (folder / "model" / "model.safetensors").is_file() and not (folder / "adapter").exists()


def test_an_unknown_format_is_one_line(trained_run):
    result = CliRunner().invoke(app, ["export", str(trained_run), "--format", "onnx"])
    assert result.exit_code == 2
    assert "--format onnx: not an export format (formats: merged, gguf, ollama, vllm, container)" in result.output


def test_gguf_export_is_checked_by_llama_cpp_and_carries_the_chat_template(smollm2_gguf):
    import llama_cpp
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from tunelab.rundir import read_jsonl

    smollm2_run, done = smollm2_gguf
    assert re.search(r"f16 answers \d+ test prompts as in eval/predictions.jsonl; q8_0 agrees on", done.stderr)
    assert "llama_model_loader" not in done.stderr  # llama.cpp's own log lines stay quiet
    folder = smollm2_run / "export" / "gguf"
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "model-f16.gguf", "model-q8_0.gguf"]
    record = json.loads((folder / "export.json").read_text())
    assert record["verified"]["same_answers_as_eval"] == record["verified"]["prompts"] > 0
    agreement = record["verified"]["agreement"]["q8_0"]
    assert agreement["test_rows"] == len(read_jsonl(smollm2_run / "eval" / "predictions.jsonl"))
    assert agreement["rate"] >= 0.9
    assert record["files"]["q8_0"]["bytes"] < 0.6 * record["files"]["f16"]["bytes"]
    # The chat template and the end-of-turn token travel in the metadata, as a chat engine needs them.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_run / "model")
    fields = GGUFReader(folder / "model-f16.gguf").fields
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # And llama.cpp's own chat path (template from the metadata) answers with a label.
    model = llama_cpp.Llama(str(folder / "model-q8_0.gguf"), n_ctx=512, verbose=False)
    prediction = read_jsonl(smollm2_run / "eval" / "predictions.jsonl")[0]
    reply = model.create_chat_completion(
        [{"role": "system", "content": "Name the diagnosis."}, {"role": "user", "content": prediction["input"]}],
        temperature=0.0, max_tokens=8)
    assert reply["choices"][0]["message"]["content"].strip() == prediction["tuned_answer"]


def test_a_model_llama_cpp_cannot_convert_fails_in_one_line_and_leaves_no_export(trained_run):
    """The tiny test model's locally trained tokenizer is unknown to llama.cpp's converter."""
    done = subprocess.run([*TUNELAB, "export", str(trained_run), "--format", "gguf"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "llama.cpp's converter failed on the merged model: NotImplementedError: BPE pre-tokenizer was not " \
           "recognized" in done.stderr
    assert not (trained_run / "export" / "gguf").exists()


@pytest.mark.parametrize("labels", [["Flu", "Migraine"], ['Say "hi"', "back\\slash", "Cold sore"]])
def test_the_label_grammar_is_one_llama_cpp_accepts(labels):
    import llama_cpp

    from tunelab.model.llama_cpp import label_grammar

    assert llama_cpp.LlamaGrammar.from_string(label_grammar(labels), verbose=False) is not None


def test_ollama_export_has_the_gguf_and_a_modelfile_whose_template_renders_the_run_s_prompts(smollm2_gguf):
    from transformers import AutoTokenizer

    from tunelab.data.chat import render_prompt
    from tunelab.export.ollama import CHATML_TEMPLATE, chatml_prompt

    run, _ = smollm2_gguf
    result = CliRunner().invoke(app, ["export", str(run), "--format", "ollama"])
    assert result.exit_code == 0, result.output
    folder = run / "export" / "ollama"
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile and (folder / "model-q8_0.gguf").stat().st_size > 10**8
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in modelfile
    assert 'SYSTEM """Name the diagnosis."""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER temperature 0" in modelfile
    # the template Ollama will use renders what the evaluation rendered, for a real test prompt
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    messages = [{"role": "system", "content": "Name the diagnosis."},
                {"role": "user", "content": json.loads((run / "data" / "test.jsonl").read_text().splitlines()[0])
                 ["messages"][-2]["content"]}]
    assert chatml_prompt(messages) == render_prompt(tokenizer, messages)
    assert json.loads((folder / "labels.json").read_text()) == ["Eczema", "Flu", "Migraine"]
    assert "ollama create run -f Modelfile" in (folder / "README.md").read_text()

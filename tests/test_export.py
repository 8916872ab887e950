"""`tunelab export`: merged weights checked against the evaluation, and the vLLM launch folder."""

import json
import subprocess
import sys

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
    assert result.exit_code == 2 and "--format onnx: not an export format (formats: merged, vllm)" in result.output

"""Each training method learns on the tiny Qwen2, and what it saves reloads with plain libraries."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from conftest import make_label_rows, write_config, write_csv
from tunelab.config import TrainConfig, load_config
from tunelab.data.chat import encode_example
from tunelab.data.prepare import prepare_stage
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import answer_loss
from tunelab.model.load import load_tokenizer
from tunelab.model.source import materialize
from tunelab.rundir import RunDir, read_jsonl
from tunelab.train.trainer import mixed_precision, run_training

LEARNING_RATES = {"full": 3e-3, "lora": 1e-2, "qlora": 1e-2}


def load_base(model_dir, method):
    if method != "qlora":
        return AutoModelForCausalLM.from_pretrained(model_dir)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_method_lowers_answer_loss_and_saved_weights_reload(method, tmp_path, label_csv, tiny_model_dir):
    config = load_config(write_config(
        tmp_path, {"source": str(label_csv)}, tiny_model_dir,
        train={"method": method, "max_steps": 8, "learning_rate": LEARNING_RATES[method], "warmup_ratio": 0.0},
    ))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    fixed_batch = read_jsonl(run_dir.split("train"))[:8]

    outcome = run_training(config, run_dir)
    tokenizer, tuned = outcome.tokenizer, outcome.model.eval()
    before = answer_loss(load_base(tiny_model_dir, method), tokenizer, fixed_batch, 128, 8)["loss"]
    after = answer_loss(tuned, tokenizer, fixed_batch, 128, 8)["loss"]
    assert after < 0.7 * before, f"{method}: answer loss {before:.3f} -> {after:.3f}"

    saved = {path.name for path in run_dir.model.iterdir()}
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    assert weights in saved and "tokenizer.json" in saved and "loss.png" in saved
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in saved)
    if method == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(run_dir.model)
    else:
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(load_base(tiny_model_dir, method), run_dir.model)
    batch = tokenizer(["I have had fever and chills for 3 days."], return_tensors="pt")
    # Trained in bf16 mixed precision (where the CPU has it), the model is compared in that precision.
    bf16 = mixed_precision(config.train, torch.float32) == "bf16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        torch.testing.assert_close(reloaded.eval()(**batch).logits, tuned(**batch).logits, atol=1e-5, rtol=1e-5)

    summary = json.loads((run_dir.model / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["effective_batch_size"] == 8
    trainable, total = summary["parameters"]["trainable"], summary["parameters"]["total"]
    assert (trainable == total) if method == "full" else (0 < trainable < total)
    # Counted in weights, not stored elements: a 4-bit tensor holds two weights per byte.
    base_weights = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert total == base_weights + (0 if method == "full" else trainable)
    logged = read_jsonl(run_dir.root / "train_log.jsonl")
    assert [r["step"] for r in logged if "loss" in r][:3] == [1, 2, 3]


def test_diverging_training_stops_with_one_line_and_keeps_its_checkpoints(tmp_path, label_csv, tiny_model_dir):
    from typer.testing import CliRunner

    from tunelab.cli import app

    config = write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir,
                          train={"max_steps": 8, "save_steps": 1, "learning_rate": 1e30})
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "training loss became nan at step" in line and "learning rate (1e+30) is probably too high" in line
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and not (tmp_path / "run" / "model").exists()


def test_watchdog_catches_an_exploding_loss():
    from transformers import TrainerControl, TrainerState

    from tunelab.train.callbacks import LossWatchdog, TrainingDiverged

    watchdog, state = LossWatchdog(learning_rate=0.5), TrainerState()
    for step, loss in enumerate([2.0, 1.5, 3.0], start=1):
        state.global_step = step
        watchdog.on_log(None, state, TrainerControl(), logs={"loss": loss})
    state.global_step = 4
    with pytest.raises(TrainingDiverged, match="exploded to 9 \\(from 2\\) at step 4"):
        watchdog.on_log(None, state, TrainerControl(), logs={"loss": 9.0})


def test_train_runs_unchanged_under_accelerate_launch_with_two_cpu_processes(tmp_path, label_csv, tiny_model_dir):
    import subprocess
    import sys
    from pathlib import Path

    config = write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir, train={"max_steps": 4})
    accelerate = Path(sys.executable).parent / "accelerate"
    done = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab", "train", str(config)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1/2: trained 4 steps" in done.stderr and "process 2/2: trained 4 steps" in done.stderr
    model = tmp_path / "run" / "model"
    assert (model / "adapter_model.safetensors").is_file()
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["process"] == "1/2" and summary["effective_batch_size"] == 16
    logged_steps = [record["step"] for record in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "loss" in record]
    assert logged_steps == sorted(set(logged_steps)) and logged_steps[-1] == 4  # once, not once per process


def _launch_training(config_path, processes: int):
    import subprocess
    import sys
    from pathlib import Path

    accelerate = Path(sys.executable).parent / "accelerate"
    launcher = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"] if processes > 1 else [sys.executable]
    done = subprocess.run([*launcher, "-m", "tunelab", "train", str(config_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_learn_the_same_model_as_one_with_twice_the_batch(tmp_path, tiny_model_dir):
    """DDP over gloo with b=4, g=2 on 2 processes = one process with b=8, g=2: each optimizer step sees
    the same examples (the sampler's order, split between the processes) and the same loss scale.
    Within an epoch: at its end accelerate pads the last batches with repeated rows to keep the
    processes in step, so a short epoch's last step differs."""
    from safetensors.torch import load_file

    csv = write_csv(tmp_path / "d.csv", make_label_rows(per_label=40))  # ~90 training rows: 4 steps of 16 fit
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        folder = tmp_path / f"p{processes}"
        folder.mkdir()
        config = write_config(folder, {"source": str(csv)}, tiny_model_dir, seed=7,
                              train={"max_steps": 4, "per_device_batch_size": batch, "gradient_accumulation_steps": 2,
                                     "mixed_precision": "no", "warmup_ratio": 0.0, "save_steps": 1000})
        _launch_training(config, processes)
        run = folder / "run"
        losses = [r["loss"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r]
        summary = json.loads((run / "model" / "training_summary.json").read_text())
        runs[processes] = losses, load_file(run / "model" / "adapter_model.safetensors"), summary
    (one_losses, one_weights, one_summary), (two_losses, two_weights, two_summary) = runs[1], runs[2]
    assert one_summary["effective_batch_size"] == two_summary["effective_batch_size"] == 16
    assert len(one_losses) == len(two_losses) == 4
    assert two_losses == pytest.approx(one_losses, abs=1e-5)
    assert one_weights.keys() == two_weights.keys()
    for name in one_weights:  # Adam divides by the gradient's own scale: 1e-7 noise shows as ~1e-5
        assert torch.allclose(one_weights[name], two_weights[name], atol=1e-4), name
    assert not torch.allclose(one_weights[name], torch.zeros_like(one_weights[name]))  # it did train


def test_training_shows_one_progress_display_and_no_raw_metric_dicts(tmp_path, label_csv, tiny_model_dir):
    import subprocess
    import sys

    config = write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir, train={"max_steps": 4},
                          evaluate={"compare_base": False})
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # stderr is a pipe here, as in a log file: the display logs its line (on a terminal it is a rich bar).
    assert "training, loss " in done.stderr and ", lr " in done.stderr and "4/4 (100%)" in done.stderr
    assert "{'loss'" not in done.stderr and "it/s]" not in done.stderr and "s/it]" not in done.stderr


@pytest.mark.parametrize("each_epoch", [False, True])
def test_training_passes_over_the_validation_split_only_when_asked(each_epoch, tmp_path, label_csv, tiny_model_dir):
    config = load_config(write_config(tmp_path, {"source": str(label_csv), "validation_size": 0.2}, tiny_model_dir,
                                      train={"max_steps": -1, "epochs": 1, "validation_loss_each_epoch": each_epoch}))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    run_training(config, run_dir)
    logged = read_jsonl(run_dir.root / "train_log.jsonl")
    assert any("eval_loss" in record for record in logged) == each_epoch


def test_token_counts_cover_every_epoch(tmp_path, label_csv, tiny_model_dir):
    config = load_config(write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir,
                                      train={"epochs": 2, "max_steps": -1, "save_steps": 1000}))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    summary = run_training(config, run_dir).summary
    rows = read_jsonl(run_dir.split("train"))
    tokenizer = load_tokenizer(materialize(config.model), config.model)
    encoded = [encode_example(tokenizer, row, config.train.max_length) for row in rows]
    answer_tokens = sum(sum(1 for t in e.labels if t != -100) for e in encoded)
    assert summary["epochs"] == 2 and summary["supervised_tokens_per_epoch"] == answer_tokens
    assert summary["supervised_tokens_seen"] == 2 * answer_tokens
    assert summary["tokens_seen"] == 2 * sum(len(e.input_ids) for e in encoded)


def _build(tmp_path, tiny_model_dir, method, dtype, **train):
    from tunelab.train.trainer import build_model

    config = load_config(write_config(tmp_path, {"source": "x.csv"}, tiny_model_dir,
                                      model={"dtype": dtype}, train={"method": method, **train}))
    return build_model(config, materialize(config.model))


def test_each_method_trains_and_freezes_weights_in_the_documented_dtypes(tmp_path, tiny_model_dir, caplog):
    """model.dtype=bfloat16 is what `auto` gives the frozen base on a bf16 GPU."""
    lora = _build(tmp_path, tiny_model_dir, "lora", "bfloat16")
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {torch.float32}  # adapters
    frozen_linears = {m.base_layer.weight.dtype for n, m in lora.named_modules() if hasattr(m, "base_layer")}
    assert frozen_linears == {torch.bfloat16}

    qlora = _build(tmp_path, tiny_model_dir, "qlora", "bfloat16")
    assert {p.dtype for p in qlora.parameters() if p.requires_grad} == {torch.float32}
    four_bit = [m.base_layer for n, m in qlora.named_modules() if hasattr(m, "base_layer")]
    assert four_bit and {type(m.weight).__name__ for m in four_bit} == {"Params4bit"}
    assert {m.compute_dtype for m in four_bit} == {torch.bfloat16}  # matmuls in bf16 over NF4

    full = _build(tmp_path, tiny_model_dir, "full", "auto")  # fp32 master weights
    assert {p.dtype for p in full.parameters()} == {torch.float32} and all(p.requires_grad for p in full.parameters())
    with caplog.at_level("WARNING"):
        assert {p.dtype for p in _build(tmp_path, tiny_model_dir, "full", "bfloat16").parameters()} == {torch.bfloat16}
    assert "without an fp32 master copy" in caplog.text
    with pytest.raises(TunelabError, match="fp16 weights cannot be trained"):
        _build(tmp_path, tiny_model_dir, "full", "float16")


def test_auto_dtype_on_a_bf16_gpu_keeps_fp32_master_weights_only_for_full_fine_tuning(monkeypatch):
    from tunelab.config import ModelConfig
    from tunelab.model.load import pick_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    auto = ModelConfig(name_or_path="m")
    assert pick_dtype(auto, trains_all_weights=True) == torch.float32
    assert pick_dtype(auto) == torch.bfloat16  # frozen base (LoRA, QLoRA) and inference
    assert mixed_precision(TrainConfig(), torch.float32) == "bf16"


def test_gradient_checkpointing_is_the_non_reentrant_kind_for_every_method(tmp_path, tiny_model_dir):
    for method in ("full", "lora", "qlora"):
        model = _build(tmp_path, tiny_model_dir, method, "auto", gradient_checkpointing=True)
        layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
        assert layers, method
        assert {m._gradient_checkpointing_func.keywords.get("use_reentrant") for m in layers} == {False}, method


def test_bitsandbytes_optimizers_without_cuda_stop_with_one_line(tmp_path, label_csv, tiny_model_dir):
    config = load_config(write_config(tmp_path, {"source": str(label_csv)}, tiny_model_dir,
                                      train={"optimizer": "paged_adamw_8bit"}))
    prepare_stage(config, RunDir(config.output_dir))
    with pytest.raises(TunelabError, match="paged_adamw_8bit needs a CUDA GPU"):
        run_training(config, RunDir(config.output_dir))
    assert not (RunDir(config.output_dir).model).exists()


def trained_with(tmp_path, label_csv, tiny_model_dir, **train):
    """A 2-step training of the tiny model with these train settings: the model and its first logged loss."""
    run_root = tmp_path / "-".join(f"{key}={value}" for key, value in train.items())
    run_root.mkdir()
    config = load_config(write_config(run_root, {"source": str(label_csv)}, tiny_model_dir,
                                      train={"max_steps": 2, **train}))
    run_dir = RunDir(config.output_dir)
    prepare_stage(config, run_dir)
    model = run_training(config, run_dir).model
    return model, next(r["loss"] for r in read_jsonl(run_dir.root / "train_log.jsonl") if "loss" in r)


def test_neftune_noise_changes_training_only(tmp_path, label_csv, tiny_model_dir):
    """train.neftune_alpha: noisy input embeddings while training (the first step's loss differs from the
    same run without it), and none left on the trained model: its embeddings are the plain lookup."""
    first_losses, models = {}, {}
    for alpha in (None, 5.0):
        models[alpha], first_losses[alpha] = trained_with(tmp_path, label_csv, tiny_model_dir, neftune_alpha=alpha)
    assert first_losses[5.0] != pytest.approx(first_losses[None], abs=1e-6)
    embeddings = models[5.0].train().get_input_embeddings()
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(embeddings(ids), torch.nn.functional.embedding(ids, embeddings.weight))


def test_label_smoothing_reaches_the_training_loss(tmp_path, label_csv, tiny_model_dir):
    """train.label_smoothing reaches the answer-only loss that trains: the first step's loss differs
    from the same run's without it."""
    _, plain = trained_with(tmp_path, label_csv, tiny_model_dir, label_smoothing=0.0)
    _, smoothed = trained_with(tmp_path, label_csv, tiny_model_dir, label_smoothing=0.5)
    assert smoothed != pytest.approx(plain, abs=1e-6)

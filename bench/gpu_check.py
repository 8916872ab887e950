"""GPU check: tunelab vs plain TRL SFTTrainer, LoRA and QLoRA, on DeepSeek-R1-Distill-Qwen-1.5B's shape.

Usage:  python bench/gpu_check.py [--steps 40] [--batch 16] [--json results.json]
CPU form (what `make test` runs):  python bench/gpu_check.py --device cpu --small

No download: the model is a random-init Qwen2ForCausalLM with the published shape of
DeepSeek-R1-Distill-Qwen-1.5B (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960,
vocab 151936, untied embeddings) and a byte-level BPE tokenizer trained here; the data are the
embedded synthetic symptom descriptions (symptom2disease-length prompts, one-label answers).
Each row trains the same steps, batch, LoRA (r 16, alpha 32, all linear layers), learning rate
and seed, in its own process (so peak memory is its own):
  tunelab-lora    tunelab's trainer: bf16 base, fp32 adapters, packed batches (one row under
                  FlashAttention), the answer-only LM head
  trl-lora        TRL SFTTrainer with its best options: padding_free, completion-only loss, bf16,
                  Liger kernels if installed, no gradient checkpointing (memory is not short here)
  tunelab-qlora / trl-qlora   the same on an NF4 base (bitsandbytes)
It prints tokens/s (non-padding input tokens, timed after the first steps), MFU against the GPU's
bf16 dense peak, peak GPU memory and the last logged training loss. MFU counts 4·N·tokens/s with
N the decoder's linear weights (forward + input-gradient pass of a frozen base; LM head, attention
and the adapters left out), the same count for every row, so it ranks rows as tokens/s does.
A row whose packages are missing is reported as skipped with the reason, never silently dropped.

On an offline GPU machine (torch, transformers, peft, accelerate installed; nothing downloadable):
bring this repository (`src/` and `bench/`) and wheels for the machine's Python, made here with
  pip download --no-deps --only-binary=:all: --python-version 3.X -d wheels PACKAGES
  tunelab rows (~3 MB):  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0
      typing-inspection==0.4.5  (and rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
      pygments==2.21.0 if rich is missing; matplotlib is optional: without it no loss.png)
  TRL rows (~70 MB, 57 MB without pandas):  trl==1.16.0 datasets==5.2.0 pyarrow==26.0.1
      dill==0.4.0 multiprocess==0.70.18 xxhash==3.6.0 pandas==3.1.1 python-dateutil==2.9.0.post0
  QLoRA rows (43 MB):  bitsandbytes==0.50.2
Under a 64 MiB limit per transfer, carry the sets in separate calls and install each as it comes
(pyarrow alone is 55 MB). There:
  pip install --no-index --no-deps wheels/*.whl
  PYTHONPATH=src python bench/gpu_check.py --json gpu_check.json
Checked here: the CPU form with transformers 5.17.0 and exactly those wheels (all four rows run).
Not yet run on a GPU; on one H100/H200 the whole run (a 1.5B model built in bf16 on the GPU, four
rows of 40 steps, each loading the model afresh) should take a few minutes, well inside 8.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEEPSEEK_R1_DISTILL_QWEN_1_5B = {
    "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
    "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": False,
    "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
}
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "tie_word_embeddings": False, "max_position_embeddings": 512}
ROWS = ("tunelab-lora", "trl-lora", "tunelab-qlora", "trl-qlora")
NEEDS = {"tunelab": ["pydantic"], "trl": ["trl", "datasets"], "qlora": ["bitsandbytes"]}
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}
LEARNING_RATE, MAX_LENGTH, SYSTEM_PROMPT = 2e-4, 512, "Name the diagnosis."
TIMING_WARMUP_STEPS = 2  # CUDA context, kernel selection and allocator growth happen in the first steps


def missing_packages(row: str) -> list[str]:
    tool, method = row.split("-")
    wanted = NEEDS[tool] + (NEEDS["qlora"] if method == "qlora" else [])
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def build(folder: Path, small: bool, device: str) -> list[dict]:
    """The model directory and the training examples (chat messages) every row trains on."""
    import torch

    from tunelab.config import DataConfig
    from tunelab.data.examples import rows_to_examples
    from tunelab.demo.random_model import local_tokenizer, save_random_qwen2
    from tunelab.demo.symptoms import generate

    rows = generate(per_condition=60, seed=0)
    tokenizer = local_tokenizer([r["text"] + " " + r["label"] for r in rows], vocab_size=2000)
    shape = SMALL if small else DEEPSEEK_R1_DISTILL_QWEN_1_5B
    save_random_qwen2(folder / "model", tokenizer, device=device, dtype=torch.bfloat16 if device == "cuda" else None,
                      **shape)
    settings = DataConfig(source="symptoms.csv", input_column="text", label_column="label",
                          system_prompt=SYSTEM_PROMPT)
    return rows_to_examples(rows, settings, "symptoms.csv")


class StepTimer:
    """Tokens and seconds from the end of step TIMING_WARMUP_STEPS to the end of training: a
    transformers TrainerCallback (both tools train with the Trainer)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == TIMING_WARMUP_STEPS:
                    timer.sync()
                    timer.start, timer.start_tokens = time.perf_counter(), state.num_input_tokens_seen

            def on_train_end(self, args, state, control, **kwargs):
                timer.sync()
                timer.seconds = time.perf_counter() - timer.start
                timer.tokens = state.num_input_tokens_seen - timer.start_tokens

        self.callback = Callback()
        self.start = self.seconds = 0.0
        self.start_tokens = self.tokens = 0

    @staticmethod
    def sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def tunelab_row(method: str, work: Path, examples: list[dict], args, timer: StepTimer) -> float:
    """tunelab's own train stage on a run directory holding data/train.jsonl; returns the last loss."""
    from tunelab.config import TunelabConfig
    from tunelab.rundir import RunDir, write_jsonl
    from tunelab.train.trainer import run_training

    run_dir = RunDir(work / f"tunelab-{method}")
    write_jsonl(run_dir.split("train"), examples)
    config = TunelabConfig(
        data={"source": "symptoms.csv", "input_column": "text", "label_column": "label"},
        model={"name_or_path": str(work / "model")},
        train={"method": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "learning_rate": LEARNING_RATE,
               "per_device_batch_size": args.batch, "max_steps": args.steps, "warmup_ratio": 0.0,
               "max_length": MAX_LENGTH, "logging_steps": 1, "save_steps": 10_000, "evaluate_after": False},
        output_dir=str(run_dir.root), seed=0,
    )
    return run_training(config, run_dir, callbacks=(timer.callback,), quiet=True).summary["train_loss_last"]


def trl_row(method: str, work: Path, examples: list[dict], args, timer: StepTimer) -> float:
    """Plain TRL: SFTTrainer on prompt/completion rows, PEFT LoRA, TRL's best speed options."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    on_gpu = torch.cuda.is_available()
    model_kwargs = {"dtype": torch.bfloat16 if on_gpu else torch.float32,
                    "attn_implementation": "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn")
                    else "sdpa"}
    if method == "qlora":
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=model_kwargs["dtype"])
    dataset = Dataset.from_list([{"prompt": e["messages"][:-1], "completion": e["messages"][-1:]} for e in examples])
    config = SFTConfig(
        output_dir=str(work / f"trl-{method}"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1, seed=0,
        save_strategy="no", report_to="none", padding_free=True, max_length=None, completion_only_loss=True,
        gradient_checkpointing=False, bf16=on_gpu, use_cpu=not on_gpu, model_init_kwargs=model_kwargs,
        use_liger_kernel=on_gpu and importlib.util.find_spec("liger_kernel") is not None,
        include_num_input_tokens_seen="non_padding", dataloader_pin_memory=on_gpu,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(work / "model"), args=config, train_dataset=dataset, peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[timer.callback])
    trainer.train()
    return [record["loss"] for record in trainer.state.log_history if "loss" in record][-1]


def body_weights(work: Path) -> int:
    """N: the decoder's linear weights (attention and MLP projections), from the saved config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(work / "model")
    hidden, kv = config.hidden_size, config.hidden_size // config.num_attention_heads * config.num_key_value_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size
    return per_layer * config.num_hidden_layers


def worker(row: str, work: Path, args) -> dict:
    import torch

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    examples = [json.loads(line) for line in (work / "examples.jsonl").read_text().splitlines()]
    tool, method = row.split("-")
    timer = StepTimer()
    loss = (tunelab_row if tool == "tunelab" else trl_row)(method, work, examples, args, timer)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"row": row, "tokens_per_s": timer.tokens / timer.seconds if timer.seconds else None,
            "timed_tokens": timer.tokens, "timed_seconds": timer.seconds, "peak_gpu_gib": peak, "last_loss": loss}


def gpu_peak_tflops(override: float | None) -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", override
    name = torch.cuda.get_device_name()
    if override:
        return name, override
    return name, next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def table(results: list[dict], device: str, peak: float | None, weights: int) -> str:
    lines = [f"device: {device}; bf16 peak: {f'{peak:g} TFLOPS' if peak else 'unknown (pass --peak-tflops)'}; "
             f"N = {weights / 1e6:.1f}M decoder linear weights",
             "| row | tokens/s | MFU | peak GPU memory | last loss |", "|---|---:|---:|---:|---:|"]
    for result in results:
        if "skipped" in result:
            lines.append(f"| {result['row']} | skipped: {result['skipped']} | | | |")
            continue
        speed = result["tokens_per_s"]
        mfu = f"{4 * weights * speed / (peak * 1e12):.1%}" if peak and speed else "n/a"
        memory = f"{result['peak_gpu_gib']:.1f} GiB" if result["peak_gpu_gib"] is not None else "n/a"
        lines.append(f"| {result['row']} | {speed:,.0f} | {mfu} | {memory} | {result['last_loss']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model of the same kind (the CPU test's form)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 40; 4 with --small)")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the built-in table")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.small else 40)
    sys.path.insert(0, str(ROOT / "src"))
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.work, args)), flush=True)
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --device cpu --small for the CPU form")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        work = Path(folder)
        started = time.perf_counter()
        examples = build(work, args.small, args.device)
        (work / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        print(f"model and {len(examples)} examples built in {time.perf_counter() - started:.0f} s", flush=True)
        results = []
        for row in args.rows:
            missing = missing_packages(row)
            if missing:
                results.append({"row": row, "skipped": "not installed: " + ", ".join(missing)})
                print(f"{row}: skipped ({results[-1]['skipped']})", flush=True)
                continue
            command = [sys.executable, __file__, "--worker", row, "--work", str(work), "--device", args.device,
                       "--steps", str(args.steps), "--batch", str(args.batch)] + (["--small"] if args.small else [])
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"row": row, "skipped": f"failed: {reason}"})
            else:
                results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"{row}: done ({time.perf_counter() - started:.0f} s)", flush=True)
        device, peak = gpu_peak_tflops(args.peak_tflops) if args.device == "cuda" else ("cpu", None)
        weights = body_weights(work)
    print(table(results, device, peak, weights))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "peak_tflops": peak, "weights": weights,
                                         "steps": args.steps, "batch": args.batch, "rows": results}, indent=2))


if __name__ == "__main__":
    main()

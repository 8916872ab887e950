"""Training throughput: plain TRL SFTTrainer + PEFT LoRA (TRL's defaults) vs tunelab's trainer, side by side.

Usage: python bench/train_throughput.py [--csv ../shared/data/symptom2disease.csv] [--examples 384] [--repeats 2]

Same model (SmolLM2-135M-Instruct), data (symptom2disease train split), LoRA (r=16, alpha=32,
dropout 0, all linear layers), effective batch (8 x 2), number of training examples, learning rate
and its schedule (linear, no warmup: TRL's), threads. Everything else is each tool's default:
TRL runs bf16 autocast with gradient checkpointing and pads each batch; tunelab runs bf16 autocast
with frozen weights stored in bf16, length-grouped packed batches and the answer-only LM head.
Runs alternate A B A B, each in its own process (peak RSS is per process, up to the end of
training: model loading included, the validation scoring after it not). Each run reports
supervised (answer) tokens/s and all (non-padding) tokens/s counted from the batches the trainer
actually consumed, peak RSS, final train loss, and the answer loss on 64 validation rows after
training (the same function for both). Then a CPU roofline: measured fp32 matmul GFLOP/s at the
model's layer shapes, the tokens/s that implies, and the share each run reaches.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import parser_with_csv

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "runs" / "bench-throughput"
VALIDATION_ROWS = 64
BATCH, ACCUMULATION, LEARNING_RATE, MAX_LENGTH = 8, 2, 1e-3, 256


def settings(csv: str, threads: int, steps: int, output_dir: Path, overrides: tuple[str, ...] = (), seed: int = 42):
    """The compared settings; `overrides` (KEY=VALUE) go through the config loader like `--set`."""
    from tunelab.config import TunelabConfig, load_config, save_config

    config = TunelabConfig(
        data={"source": csv, "input_column": "text", "label_column": "label", "system_prompt": "Name the diagnosis.",
              "test_size": 0.2, "validation_size": 0.06},
        prepare={"dedup_threshold": None},
        model={"name_or_path": "smollm2-135m-instruct"},
        train={"method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "learning_rate": LEARNING_RATE,
               "per_device_batch_size": BATCH, "gradient_accumulation_steps": ACCUMULATION, "max_steps": steps,
               "warmup_ratio": 0.0, "scheduler": "linear", "max_length": MAX_LENGTH, "logging_steps": 1,
               "save_steps": 10_000, "num_threads": threads, "evaluate_after": False},
        output_dir=str(output_dir), seed=seed,
    )
    if not overrides:
        return config
    path = output_dir.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(config, path)
    return load_config(path, list(overrides))


class BatchCounter:
    """Wraps a trainer's collator: counts answer tokens and non-padding tokens of each training batch."""

    def __init__(self, collator):
        self.collator, self.supervised, self.tokens, self.slots = collator, 0, 0, 0

    def __call__(self, features):
        batch = self.collator(features)
        self.supervised += int((batch["labels"][:, 1:] != -100).sum())
        self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else sum(
            len(f["input_ids"]) for f in features)
        self.slots += batch["input_ids"].numel()
        return batch


def trl_trainer(config, run_dir, model_path: str):
    """TRL's defaults except what the comparison must hold equal (batch, steps, LoRA, lr, length, threads)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelab.rundir import read_jsonl

    def prompt_completion(example):
        messages = example["messages"]
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    dataset = Dataset.from_list([prompt_completion(e) for e in read_jsonl(run_dir.split("train"))])
    train = config.train
    args = SFTConfig(
        output_dir=str(run_dir.root / "trl"), per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps, max_steps=train.max_steps,
        learning_rate=train.learning_rate, max_length=train.max_length, warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=config.seed,
    )
    lora = LoraConfig(r=train.lora.r, lora_alpha=train.lora.alpha, lora_dropout=train.lora.dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora,
                         processing_class=AutoTokenizer.from_pretrained(model_path))
    return trainer


def worker(variant: str, csv: str, threads: int, steps: int, overrides: tuple[str, ...], seed: int) -> dict:
    import torch

    from tunelab.data.prepare import prepare_stage
    from tunelab.evaluate.generation import answer_loss
    from tunelab.model.load import load_tokenizer
    from tunelab.model.source import materialize
    from tunelab.rundir import RunDir, read_jsonl
    from tunelab.train import trainer as tunelab_trainer

    torch.set_num_threads(threads)
    config = settings(csv, threads, steps, RUN_DIR / variant, overrides if variant == "tunelab" else (), seed)
    shared = RunDir(RUN_DIR)
    prepare_stage(config.model_copy(update={"seed": 42}), shared)  # one split for every run
    run_dir = RunDir(RUN_DIR / variant, data=shared.data)
    source = materialize(config.model)
    counters: list[BatchCounter] = []
    if variant == "trl":
        trainer = trl_trainer(config, run_dir, source.path)
        trainer.data_collator = BatchCounter(trainer.data_collator)
        counters.append(trainer.data_collator)
        started = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - started
        model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # scored in fp32
        train_loss = result.training_loss
    else:
        original = tunelab_trainer.TunelabTrainer.__init__

        def counting_init(self, *args, **kwargs):  # the bench's instrument, not the product's
            kwargs["data_collator"] = BatchCounter(kwargs["data_collator"])
            counters.append(kwargs["data_collator"])
            original(self, *args, **kwargs)

        tunelab_trainer.TunelabTrainer.__init__ = counting_init
        outcome = tunelab_trainer.run_training(config, run_dir, quiet=True)
        wall, model = outcome.summary["wall_seconds"], outcome.model
        train_loss = outcome.summary["train_loss_mean"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # training only, not the scoring below
    counter = counters[0]
    model.eval()
    validation = read_jsonl(run_dir.split("validation"))[:VALIDATION_ROWS]
    loss = answer_loss(model, load_tokenizer(source, config.model), validation, MAX_LENGTH, 16)["loss"]
    return {"variant": variant, "wall_s": wall, "examples": steps * BATCH * ACCUMULATION,
            "supervised_tokens": counter.supervised, "tokens": counter.tokens, "slots": counter.slots,
            "supervised_per_s": counter.supervised / wall, "tokens_per_s": counter.tokens / wall,
            "padding_share": 1 - counter.tokens / counter.slots,
            "peak_rss_gib": peak_rss,
            "train_loss": train_loss, "validation_loss": loss}


def model_shapes() -> tuple[dict[str, tuple[int, int]], int, int]:
    """(name -> (in, out)) of one decoder layer's linear maps, layer count, vocabulary size."""
    from transformers import AutoConfig

    from tunelab.config import ModelConfig
    from tunelab.model.source import materialize

    config = AutoConfig.from_pretrained(materialize(ModelConfig(name_or_path="smollm2-135m-instruct")).path)
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    kv = hidden // heads * kv_heads
    shapes = {"q": (hidden, hidden), "k": (hidden, kv), "v": (hidden, kv), "o": (hidden, hidden),
              "gate": (hidden, config.intermediate_size), "up": (hidden, config.intermediate_size),
              "down": (config.intermediate_size, hidden)}
    return shapes, config.num_hidden_layers, config.vocab_size


def roofline(threads: int, tokens: int = 512) -> dict:
    """Measured matmul GFLOP/s at the layer shapes; the tokens/s a LoRA training step could reach.

    Per token, forward 2·(in·out) FLOPs per frozen linear map and backward 2·(in·out) more (input
    gradient only: frozen weights get none); the LM head once for forward and once for backward.
    Attention scores, norms and LoRA's small matrices are left out, so this bounds from above.
    Measured in fp32 and in bf16 (what both runs multiply in under autocast).
    """
    import torch

    torch.set_num_threads(threads)
    shapes, layers, vocab = model_shapes()
    hidden = shapes["q"][0]

    def seconds(n_in: int, n_out: int, dtype) -> float:
        x, w = torch.randn(tokens, n_in, dtype=dtype), torch.randn(n_in, n_out, dtype=dtype)
        for _ in range(3):
            x @ w
        started, repeats = time.perf_counter(), 20
        for _ in range(repeats):
            x @ w
        return (time.perf_counter() - started) / repeats / tokens  # per token

    body_flops = sum(4 * i * o for i, o in shapes.values()) * layers
    head_flops = 4 * hidden * vocab
    bounds = {"body_gflops_per_token": body_flops / 1e9, "head_gflops_per_token": head_flops / 1e9}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        body = sum(2 * seconds(i, o, dtype) for i, o in shapes.values()) * layers
        head = 2 * seconds(hidden, vocab, dtype)
        bounds[name] = {"gflops": (body_flops + head_flops) / (body + head) / 1e9,
                        "head_everywhere_tokens_per_s": 1 / (body + head), "body_only_tokens_per_s": 1 / body}
    return bounds


def main() -> None:
    parser = parser_with_csv(__doc__)
    parser.add_argument("--examples", type=int, default=384, help="training examples per run (multiple of 16)")
    parser.add_argument("--repeats", type=int, default=3, help="A B pairs; repeat r seeds both runs with 42 + r")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a tunelab setting (to measure one switch at a time)")
    parser.add_argument("--seed", type=int, default=42, help=argparse_suppress())
    parser.add_argument("--worker", choices=["trl", "tunelab"], help=argparse_suppress())
    args = parser.parse_args()
    steps = args.examples // (BATCH * ACCUMULATION)
    if args.worker:
        print(json.dumps(worker(args.worker, args.csv, args.threads, steps, tuple(args.overrides), args.seed)))
        return
    runs: dict[str, list[dict]] = {"trl": [], "tunelab": []}
    for repeat in range(args.repeats):
        for variant in ("trl", "tunelab"):
            done = subprocess.run([sys.executable, __file__, "--worker", variant, "--csv", args.csv, "--examples",
                                   str(args.examples), "--threads", str(args.threads), "--seed", str(42 + repeat),
                                   *[f"--set={o}" for o in args.overrides]], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{variant} run failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[variant].append(result)
            print(f"repeat {repeat + 1} {variant:8s} wall {result['wall_s']:7.1f} s  supervised "
                  f"{result['supervised_per_s']:6.2f} tok/s  all {result['tokens_per_s']:7.1f} tok/s  padding "
                  f"{result['padding_share']:.1%}  peak RSS {result['peak_rss_gib']:.2f} GiB  train loss "
                  f"{result['train_loss']:.4f}  validation loss {result['validation_loss']:.4f}", flush=True)
    summary = {variant: {key: statistics.median(r[key] for r in results)
                         for key in ("supervised_per_s", "tokens_per_s", "peak_rss_gib", "train_loss",
                                     "validation_loss", "padding_share")}
               for variant, results in runs.items()}
    base, ours = summary["trl"], summary["tunelab"]
    print(f"\nmedians over {args.repeats} repeats (seeds 42..{41 + args.repeats}), {args.examples} examples each, "
          f"{args.threads} threads:")
    for variant, values in summary.items():
        print(f"  {variant:8s} " + "  ".join(f"{key} {value:.4g}" for key, value in values.items()))
    print(f"ratios tunelab / TRL: supervised tokens/s {ours['supervised_per_s'] / base['supervised_per_s']:.2f}x, "
          f"all tokens/s {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x, peak RSS "
          f"{ours['peak_rss_gib'] / base['peak_rss_gib']:.2f}x, validation loss "
          f"{ours['validation_loss']:.4f} vs {base['validation_loss']:.4f}")
    bound = roofline(args.threads)
    print(f"roofline: training FLOPs per token {bound['body_gflops_per_token']:.3f} G (body) + "
          f"{bound['head_gflops_per_token']:.3f} G (LM head)")
    for precision in ("fp32", "bf16"):
        values = bound[precision]
        print(f"  {precision} matmul {values['gflops']:.0f} GFLOP/s at the layer shapes -> "
              f"{values['head_everywhere_tokens_per_s']:.0f} tokens/s with the head everywhere, "
              f"{values['body_only_tokens_per_s']:.0f} tokens/s body only")
    for variant, values in summary.items():
        reached, bf16 = values["tokens_per_s"], bound["bf16"]
        print(f"  {variant:8s} (bf16 autocast) reaches {reached / bf16['head_everywhere_tokens_per_s']:.1%} "
              f"of the bf16 head-everywhere bound, {reached / bf16['body_only_tokens_per_s']:.1%} of body-only")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

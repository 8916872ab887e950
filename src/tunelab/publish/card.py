"""The model card: real test metrics, the training config, the search winner and the data story."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tunelab.config import TunelabConfig
from tunelab.data.chat import PLAIN_ANSWER_BUDGET
from tunelab.data.examples import user_text
from tunelab.data.load import dataset_name
from tunelab.data.prepare import duplicates_summary
from tunelab.evaluate.scoring import comparison_rows
from tunelab.model.source import base_model_id, base_model_name
from tunelab.rundir import RunDir, read_jsonl, read_trials


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def card_data(config: TunelabConfig, metrics: dict[str, Any], repo_id: str, license_id: str | None) -> ModelCardData:
    tuned = metrics.get("tuned", {})
    results = [
        EvalResult(task_type="text-generation", dataset_type="csv" if Path(config.data.source).suffix else
                   config.data.source, dataset_name=dataset_name(config.data.source, config.data.name),
                   dataset_split="test", metric_type=name, metric_value=round(float(tuned[name]), 4))
        for name in ("accuracy", "macro_f1", "loss") if name in tuned
    ]
    hub_dataset = [config.data.source] if not Path(config.data.source).suffix and "/" in config.data.source else None
    return ModelCardData(
        base_model=base_model_id(config.model),
        library_name="transformers" if config.train.method == "full" else "peft",
        pipeline_tag="text-generation", tags=["tunelab", config.train.method, "fine-tuned"], license=license_id,
        datasets=hub_dataset, model_name=repo_id, eval_results=results or None,
    )


def _metrics_table(metrics: dict[str, Any]) -> str:
    names, rows = comparison_rows(metrics)
    lines = [f"| {key} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in values) + " |"
             for key, values in rows]
    table = "\n".join([f"| metric | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|", *lines])
    return table + (f"\n\n{metrics['verdict']}" if metrics.get("verdict") else "")


def _search_summary(run_dir: RunDir) -> str:
    rows = read_trials(run_dir)
    if not rows:
        return "No hyperparameter search was run; the values above were set by hand."
    header = [h for h in rows[0] if h != "note"]
    lines = [f"{len(rows)} trials scored on the validation split (best first):", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows[:5]]
    return "\n".join(lines)


def _data_summary(run_dir: RunDir) -> str:
    report = _read_json(run_dir.data / "prepare_report.json")
    if not report:
        return ""
    clusters = report["clusters"]
    return (f"{report['counts']['rows_read']} rows read; {duplicates_summary(report)}; K = {clusters['k']} clusters "
            f"({clusters['method']}); split {report['sizes']}"
            + (f"; training on a {report['sample']['strategy']} sample of {report['sample']['size']} of "
               f"{report['sample']['pool']} rows" if "sample" in report else "") + ".")


def _training_summary(run_dir: RunDir) -> str:
    summary = _read_json(run_dir.model / "training_summary.json")
    if not summary:
        return "No training summary."
    return (f"{summary['steps']} optimizer steps of {summary['effective_batch_size']} examples on "
            f"{summary['train_rows']} rows ({summary.get('epochs', '?')} epochs) in {summary['wall_seconds']:.0f} s; "
            f"train loss last logged {summary['train_loss_last']:.4f}, mean over the run "
            f"{summary['train_loss_mean']:.4f} (answer tokens only).")


def _example_prompt(run_dir: RunDir) -> str:
    """The first test row's text: a prompt of the task, whatever the task is."""
    test = run_dir.split("test")
    rows = read_jsonl(test) if test.is_file() else []
    return user_text(rows[0]) if rows else "..."


def _usage(config: TunelabConfig, repo_id: str, merged: bool, budget: int, prompt: str) -> str:
    system = config.data.system_prompt or ""
    if config.train.method == "full" or merged:
        load = (f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
    else:
        load = (f'base = AutoModelForCausalLM.from_pretrained("{base_model_name(config.model)}")\n'
                f'model = PeftModel.from_pretrained(base, "{repo_id}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
        imports = "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer"
    return f"""```python
{imports}

{load}
messages = [{{"role": "system", "content": {system!r}}},
            {{"role": "user", "content": {prompt!r}}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
answer = model.generate(**inputs, max_new_tokens={budget}, do_sample=False)
print(tokenizer.decode(answer[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


# Where the base lies on this machine means nothing to a reader; its Hub id stands for it.
LOCAL_MODEL_KEYS = {"name_or_path", "gguf_file", "cache_dir", "hub_id"}


def training_settings(config: TunelabConfig) -> dict[str, Any]:
    """The model and train sections as the card shows them: the base by its public name, no local paths."""
    model = {"base_model": base_model_name(config.model),
             **config.model.model_dump(mode="json", exclude=LOCAL_MODEL_KEYS)}
    return {"model": model, "train": config.train.model_dump(mode="json")}


def model_card(config: TunelabConfig, run_dir: RunDir, repo_id: str, merged: bool, license_id: str | None,
               pictures: list[str]) -> ModelCard:
    metrics = _read_json(run_dir.eval / "metrics.json")
    training = training_settings(config)
    body = f"""
# {repo_id}

`{base_model_name(config.model)}` fine-tuned with tunelab ({config.train.method}) to
answer: *{config.data.system_prompt or "the task of its training data"}*

## Intended use and limits

{config.publish.intended_use}
{f"{chr(10)}**{config.publish.disclaimer}**{chr(10)}" if config.publish.disclaimer else ""}
## Test results (held-out split, {metrics.get("n_test", "?")} examples, identical prompts)

{_metrics_table(metrics) if metrics else "Not evaluated."}

## Data

{_data_summary(run_dir)}

## Hyperparameter search

{_search_summary(run_dir)}

## Training

{_training_summary(run_dir)}

## Training configuration

```yaml
{yaml.safe_dump(training, sort_keys=False).strip()}
```

## How to use

{_usage(config, repo_id, merged, metrics.get("max_new_tokens") or PLAIN_ANSWER_BUDGET, _example_prompt(run_dir))}

## Plots

{chr(10).join(f"![{name}]({name})" for name in pictures)}
"""
    return ModelCard(f"---\n{card_data(config, metrics, repo_id, license_id).to_yaml()}\n---\n{body}")

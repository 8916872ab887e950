"""`tunelab` command line: parse, load the config, call a stage, show the result. No logic here."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from tunelab.errors import TunelabError

app = typer.Typer(
    help=(
        "Fine-tune a small causal LM on your dataset and measure it honestly.\n\n"
        "Typical use: write a YAML config (see examples/), then `tunelab run CONFIG`: it prepares the data "
        "(duplicates out, clusters, a representative sample, a leakage-free split), searches the training "
        "settings on the validation split, trains (full, LoRA or QLoRA), scores the base and the tuned "
        "model on the untouched test split, builds the model card and writes report.html. Each stage also "
        "has its own command."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal's width
)
console = Console(stderr=True)
# Tables and answers go to stdout; piped into a file they keep their width instead of Rich's guess of
# 80 columns, which cut a search's learning rates and scores down to "0.…".
out = Console(width=None if sys.stdout.isatty() else 200)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (sections data, model, train, evaluate, output_dir).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.learning_rate=1e-4 (repeatable)."),
]
OutputOption = Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run directory (overrides output_dir).")]


def _setup_logging(verbose: bool) -> None:
    """Our progress and results always; library chatter (load bars, deprecations) only with -v."""
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*experimental.*")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="sklearn")  # e.g. PCA of 2 rows
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # read the variable at its import: an in-process caller (a notebook)
        from transformers.utils import logging as transformers_logging

        (transformers_logging.enable_progress_bar if verbose else transformers_logging.disable_progress_bar)()
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # a log file or a pipe: whole lines, one per record (rich would wrap them at 80 columns)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if getattr(h, "tunelab", False)]:  # an earlier in-process command's
        root.removeHandler(previous)
    handler.tunelab = True
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("tunelab").setLevel(logging.INFO)


def _fail(error: TunelabError) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs too.")] = False):
    _setup_logging(verbose)


@app.command()
def run(
    config: ConfigArg,
    set_: SetOption = None,
    output_dir: OutputOption = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Re-run this stage and the ones after it: prepare, search, "
                                 "train, evaluate or publish.")
    ] = None,
):
    """The whole job: prepare → search → train → evaluate → publish, in one run directory.

    Re-run the same command after a crash or a change: stages done with the same inputs are skipped
    (stages.json records each stage's input hash), a changed setting re-runs its stage and what
    follows, and an interrupted training continues from its newest complete checkpoint. The search
    stage runs when `search.space` is set; training then uses the winning values.
    """
    from tunelab.pipeline import load, run_pipeline

    try:
        loaded, run_dir = load(config, set_ or [], output_dir)
        outputs = run_pipeline(loaded, run_dir, from_stage)
    except TunelabError as error:
        _fail(error)
    _show_run(outputs, run_dir)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained and evaluated model.")],
    format_: Annotated[str, typer.Option("--format", "-f", help="merged: full weights for transformers, checked "
                                         "against eval/predictions.jsonl; gguf: llama.cpp file(s), checked by "
                                         "llama.cpp; ollama: a GGUF and a Modelfile; vllm: adapter or weights and "
                                         "serve.sh for `vllm serve` on a GPU; container: a Docker build context "
                                         "for Vertex AI or any host.")] = "merged",
    quant: Annotated[str | None, typer.Option("--quant", "-q", help="gguf: f16 (default; always written and "
                                              "checked), q8_0 or q4_k_m (written beside it, agreement rate "
                                              "measured); ollama, container: the file served (default q8_0).")] = None,
    set_: SetOption = None,
):
    """Export the tuned model for an inference engine into RUN_DIR/export/FORMAT/.

    `merged` folds a LoRA adapter into full fp32 weights with the run's tokenizer and chat template,
    then loads the folder with plain transformers and asks it the evaluation's first test prompts:
    the answers must be those of eval/predictions.jsonl. `vllm` writes the adapter (served on the
    base by its Hub id; `--set model.hub_id=OWNER/NAME` for a local base, else full weights), a
    serve.sh for `vllm serve`, labels.json for answers restricted to the labels, and a README.
    `gguf` converts the merged weights with llama.cpp's own converter (chat template and end-of-turn
    token in the metadata), asks the f16 file the same prompts through llama.cpp (answers restricted
    to the labels by a grammar) and, with `--quant q8_0|q4_k_m`, quantizes it and measures how many
    test answers the quantized file keeps, e.g. `tunelab export runs/demo -f gguf -q q8_0`.
    Each folder holds an export.json saying what it is and how it was checked.
    """
    from tunelab.pipeline import export_run

    try:
        result = export_run(run_dir, format_, set_ or [], quant)
    except TunelabError as error:
        _fail(error)
    checked = result["verified"]
    how = (f"{checked['prompts']} test prompts answered as in eval/predictions.jsonl ({checked['engine']})"
           if checked else result["note"])
    console.print(f"{result['format']} export: {result['folder']}; {how}", soft_wrap=True)


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained model.")],
    host: Annotated[str | None, typer.Option(help="Address to bind (serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serve.port, 8000; AIP_HTTP_PORT wins).")] = None,
    set_: SetOption = None,
):
    """Serve the tuned model over HTTP: OpenAI-compatible and Vertex AI-ready.

    Routes: `POST /v1/chat/completions` (with `stream: true`), `GET /v1/models`, `GET /health`, and
    Vertex AI's `POST /predict` (`{"instances": [{"messages": [...]}], "parameters": {"max_tokens": N}}`;
    AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE move port and routes). The model name is the
    run directory's name. Label tasks answer with one of the labels, as in the evaluation. Each of the
    `serve.workers` copies of the model (default 1) answers one request at a time on its share of the
    cores; beyond `serve.max_waiting` waiting requests the answer is 503, and every
    bad request (bad JSON, unknown model, prompt over the context, max_tokens over serve.max_tokens)
    gets a 4xx JSON error while the server keeps serving. The engine: llama.cpp on the run's GGUF
    export when there is one (`tunelab export RUN -f gguf -q q8_0`; several times faster on a CPU),
    else transformers; `--set serve.engine=transformers` or `--set serve.gguf=f16` to choose. Under load:
    `--set serve.engine=llama-server --set serve.workers=16` hands the GGUF file to llama.cpp's own
    server, whose 16 slots decode in one batch (about 5x the requests/s of transformers at 16 clients).
    """
    import uvicorn

    from tunelab.pipeline import serve_app

    overrides = [*(set_ or []), *([f"serve.host={host}"] if host else []), *([f"serve.port={port}"] if port else [])]
    try:
        app_, settings = serve_app(run_dir, overrides)
    except TunelabError as error:
        _fail(error)
    uvicorn.run(app_, host=settings.host, port=int(os.environ.get("AIP_HTTP_PORT", settings.port)),
                log_level="warning")


@app.command()
def publish(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained and evaluated model.")],
    repo_id: Annotated[str | None, typer.Option(help="OWNER/NAME on the Hub (HF_ENDPOINT for another server).")] = None,
    private: Annotated[bool | None, typer.Option(help="Create the repository private (default) or public.")] = None,
    allow_public: Annotated[bool | None, typer.Option(
        "--allow-public", help="Push into an existing public repository although --private is on.")] = None,
    merged: Annotated[bool | None, typer.Option(help="Upload merged full weights instead of the adapter.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only build RUN_DIR/publish/ and list it.")] = False,
    verify: Annotated[bool | None, typer.Option(help="After the push, download the repo and check it gives the "
                                                     "answers of eval/predictions.jsonl (default on).")] = None,
    set_: SetOption = None,
):
    """Write the model card and the upload folder (RUN_DIR/publish/), then push it to the Hub.

    The card holds the real test metrics, the training config, the search winner and the data
    preparation. The token comes from HF_TOKEN or `hf auth login` and is never written; HF_ENDPOINT
    selects another Hub-compatible server. An adapter names its base by Hub id: for a base loaded
    from a local copy give it with --set model.hub_id=OWNER/NAME (or push --merged weights). A
    private push into an existing public repository is refused unless --allow-public. After the push
    the repo is downloaded back, loaded with plain transformers/peft and asked the first test
    prompts, which must get the answers recorded in eval/predictions.jsonl.
    """
    from tunelab.pipeline import publish_run

    flags = {"repo_id": repo_id, "private": private, "allow_public": allow_public, "merged": merged,
             "dry_run": dry_run or None, "verify": verify}
    overrides = [*(set_ or []), *(f"publish.{key}={value}" for key, value in flags.items() if value is not None)]
    try:
        result = publish_run(run_dir, overrides)
    except TunelabError as error:
        _fail(error)
    _show_publish(result)


def _show_publish(result: dict) -> None:
    pushed = f"pushed to {result.get('url')} (commit {result.get('commit')})"
    what = "dry run: nothing uploaded" if result["dry_run"] else pushed
    console.print(f"{what}; folder {result['folder']} ({len(result['files'])} files: {', '.join(result['files'])})",
                  soft_wrap=True)
    if "verified" in result:
        checked = result["verified"]
        console.print(f"verified: downloaded {checked['files']} identical files, {checked['prompts']} test prompts "
                      f"answered as in eval/predictions.jsonl; {result['url']}", soft_wrap=True)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]):
    """Write RUN_DIR/report.html: data preparation, search, training and evaluation on one page.

    Self-contained (images embedded, no network): open it in any browser or attach it to a ticket.
    `tunelab run` writes it at the end.
    """
    from tunelab.report import write_report

    if not (run_dir / "config.yaml").is_file():
        _fail(TunelabError(f"{run_dir}: not a tunelab run directory (no config.yaml)"))
    console.print(f"wrote {write_report(run_dir)}")


def _show_run(outputs: dict, run_dir) -> None:
    import json

    if outputs["skipped"]:
        console.print(f"skipped (done before with the same inputs): {', '.join(outputs['skipped'])}", soft_wrap=True)
    report = json.loads((run_dir.data / "prepare_report.json").read_text())
    console.print(f"data: {report['counts']['rows_read']} rows, split {report['sizes']}, "
                  f"K={report['clusters']['k']} clusters")
    if "search" in outputs:
        console.print(f"search: best {outputs['search']['metric']} {outputs['search']['best_value']:.4f} with "
                      f"{outputs['search']['best_params']}")
        _show_level_with_best(outputs["search"])
    metrics = json.loads((run_dir.eval / "metrics.json").read_text())
    _show_metrics(metrics, run_dir.root)
    if "publish" in outputs:
        _show_publish(outputs["publish"])
    console.print(f"model: {run_dir.model}   metrics: {run_dir.eval / 'metrics.json'}   "
                  f"report: {run_dir.root / 'report.html'}")


@app.command()
def prepare(config: ConfigArg, set_: SetOption = None, output_dir: OutputOption = None):
    """Vectorize, de-duplicate, split, cluster (K by G-means) and sample the training data.

    Near-duplicates are candidates within `prepare.dedup_threshold` in vector space whose words also
    differ little (`prepare.dedup_word_share`); rows with different labels are never merged.

    Writes RUN_DIR/data/: train/validation/test.jsonl, duplicates.jsonl (each removed row with its
    kept twin, and each near-copy pair with different labels), prepare_report.json (counts, K,
    silhouette, representativeness) and PNG plots.
    `tunelab train` runs this stage itself when data/ is missing or was made from other settings.
    """
    from tunelab.pipeline import prepare_run

    try:
        run_dir, report = prepare_run(config, set_ or [], output_dir)
    except TunelabError as error:
        _fail(error)
    _show_prepare(report, run_dir.data)


def _show_prepare(report: dict, folder: Path) -> None:
    from tunelab.data.prepare import duplicates_summary

    table = Table(title="prepare")
    table.add_column("step")
    table.add_column("rows", justify="right")
    for step, count in report["counts"].items():
        table.add_row(step.replace("_", " "), str(count))
    out.print(table)
    console.print(f"{duplicates_summary(report)}; every pair is listed in duplicates.jsonl")
    clusters = report["clusters"]
    silhouette = f"{clusters['silhouette']:.3f}" if clusters["silhouette"] is not None else "n/a"
    console.print(f"K={clusters['k']} ({clusters['method']}), silhouette {silhouette}; "
                  f"split {report['sizes']}")
    for name, values in report.get("representativeness", {}).items():
        if values["random_mean"] is not None:
            console.print(f"{name}: sample {values['sample']:.4f}, random {values['random_mean']:.4f} "
                          f"± {values['random_std']:.4f} (percentile {values['percentile']:.0f})")
    console.print(f"written to {folder}")


@app.command()
def search(
    config: ConfigArg,
    set_: SetOption = None,
    output_dir: OutputOption = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna RDB URL shared by several workers, e.g. postgresql://host/db.")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="grid, halving or tpe (overrides search.strategy).")] = None,
):
    """Find the best training settings on the validation split (Optuna).

    Every trial trains a fresh model from the base with one combination of `search.space` and is
    scored on validation (never on test). `--strategy halving` runs the same grid but stops trials
    whose validation loss falls behind after 1/27, 1/9 or 1/3 of their training (about a third of the
    grid's training tokens; search.rungs, search.reduction_factor, search.tie_margin).
    Interrupt and re-run: finished trials are kept. Run the same
    command in several terminals or machines with one --storage to share the work. Writes
    RUN_DIR/search/: study.db, trials.csv, best.yaml (train it with `tunelab train best.yaml`), plots.
    """
    from tunelab.pipeline import search_run

    overrides = list(set_ or [])
    overrides += [f"search.storage={storage}"] if storage else []
    overrides += [f"search.strategy={strategy}"] if strategy else []
    try:
        result = search_run(config, overrides, output_dir)
    except TunelabError as error:
        _fail(error)
    _show_trials(result)


def _show_trials(result: dict) -> None:
    rows, metric = result["rows"], result["metric"]
    table = Table(title=f"search: {len(rows)} trials ranked by validation {metric}")
    columns = [key for key in rows[0] if key not in ("note",)] + ["note"]
    for column in columns:
        table.add_column(column.removeprefix("train."), justify="left" if column in ("state", "note") else "right",
                         max_width=48 if column == "note" else None, overflow="ellipsis", no_wrap=column == "note")
    for row in rows:
        table.add_row(*["" if row.get(c) is None else (f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]))
                        for c in columns])
    out.print(table)
    console.print(f"best {metric} {result['best_value']:.4f} with {result['best_params']}; "
                  f"config: {result['folder']}/best.yaml")
    _show_level_with_best(result)


def _show_level_with_best(result: dict) -> None:
    """Say which finished trials the validation split cannot rank below the best, so that a win by a row
    or two is not read as a better recipe."""
    if result["level_with_best"]:
        trials = ", ".join(f"#{n}" for n in result["level_with_best"])
        console.print(f"level with the best: trials {trials} (on {result['validation_rows']} validation rows their "
                      "gap could be chance, 95%); more validation rows or test seeds decide between them")


@app.command()
def train(
    config: ConfigArg,
    set_: SetOption = None,
    output_dir: OutputOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in the run directory.")] = False,
):
    """Split the data, fine-tune the model and (by default) evaluate it on the test split.

    Writes RUN_DIR/config.yaml (resolved), data/{train,validation,test}.jsonl, checkpoints/,
    model/ (adapter or full weights as safetensors, tokenizer, loss.png), train_log.jsonl and eval/.
    """
    from tunelab.pipeline import train_run

    try:
        summary, metrics = train_run(config, set_ or [], output_dir, resume)
    except TunelabError as error:
        _fail(error)
    process = f"process {summary['process']}: " if not summary["process"].endswith("/1") else ""
    console.print(
        f"{process}trained {summary['steps']} steps in {summary['wall_seconds']:.0f} s "
        f"(effective batch {summary['effective_batch_size']}; train loss last logged "
        f"{summary['train_loss_last']:.4f}, mean over the run {summary['train_loss_mean']:.4f})"
    )
    run = summary["run_dir"]
    if metrics:
        _show_metrics(metrics, Path(run))
    console.print(f"model: {run}/model   metrics: {run}/eval/metrics.json   predictions: {run}/eval/predictions.jsonl")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory written by `tunelab train`.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Score this file (same columns as training) instead of test split.")
    ] = None,
    decoding: Annotated[
        list[str] | None, typer.Option("--decoding", help="greedy, sampling or beam; repeat to compare strategies.")
    ] = None,
    set_: SetOption = None,
):
    """Score the base and the tuned model with identical prompts (greedy decoding by default).

    Label tasks also get the TF-IDF + logistic regression baseline, fitted on the run's training
    split, and one sentence saying whether the tuned model beats it. Writes eval/metrics.json
    ({"base": ..., "tuned": ..., "baseline": ..., "n_test": ...}), eval/predictions.jsonl and
    confusion matrices. `--data new.csv` writes to eval-new/ instead: eval/ keeps describing the
    held-out split. With several --decoding values the tuned model is scored with each;
    eval/decoding_comparison.json holds that table and the other files stay as they were.
    """
    from tunelab.pipeline import compare_decodings, evaluate_run
    from tunelab.rundir import RunDir

    try:
        if decoding and len(decoding) > 1:
            _show_decodings(compare_decodings(run_dir, data, set_ or [], decoding))
            return
        overrides = [*(set_ or []), *([f"evaluate.decoding.strategy={decoding[0]}"] if decoding else [])]
        metrics = evaluate_run(run_dir, data, overrides)
    except TunelabError as error:
        _fail(error)
    _show_metrics(metrics, run_dir, data)
    console.print(f"written to {RunDir(run_dir).evaluation(data)}")


def _show_decodings(table_rows: dict) -> None:
    from tunelab.evaluate.scoring import GENERATION_METRICS as keys

    table = Table(title="tuned model by decoding strategy")
    table.add_column("decoding")
    present = [k for k in keys if k in next(iter(table_rows.values()))]
    for key in present:
        table.add_column(key, justify="right")
    for name, metrics in table_rows.items():
        table.add_row(name, *[f"{metrics[k]:.4f}" for k in present])
    out.print(table)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained model.")],
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Ask this (repeatable); "
                                                     "without it, read questions line by line.")] = None,
    decoding: Annotated[str | None, typer.Option(help="greedy, sampling or beam.")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    top_k: Annotated[int | None, typer.Option(help="sampling: top-k")] = None,
    top_p: Annotated[float | None, typer.Option(help="sampling: nucleus top-p")] = None,
    num_beams: Annotated[int | None, typer.Option(help="beam search width")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(help="above 1 discourages repetition")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="answer budget in tokens")] = None,
    show_thinking: Annotated[bool, typer.Option(help="Keep the `<think>…</think>` block of reasoning models.")] = False,
    base: Annotated[bool, typer.Option(help="Ask the base model instead of the tuned one.")] = False,
    free: Annotated[bool, typer.Option(help="Label tasks: let the model answer in its own words instead of "
                                            "one of the training labels.")] = False,
):
    """Ask the fine-tuned model, with the run's system prompt and chat template.

    For label tasks the answer is one of the training labels (`evaluate.constrain_to_labels`);
    `--free` shows what the model writes unconstrained.

    Decoding flags override the run's `evaluate.decoding` settings, e.g.
    `tunelab generate runs/demo -p "I sneeze and my eyes itch" --decoding beam --num-beams 4`.
    """
    import sys

    from tunelab.config import config_from_run_dir
    from tunelab.evaluate.ask import answers
    from tunelab.rundir import RunDir

    flags = {"strategy": decoding, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "num_beams": num_beams, "repetition_penalty": repetition_penalty}
    overrides = [f"evaluate.decoding.{key}={value}" for key, value in flags.items() if value is not None]
    overrides += [f"evaluate.max_new_tokens={max_new_tokens}"] if max_new_tokens else []
    overrides += ["evaluate.constrain_to_labels=false"] if free else []
    try:
        config = config_from_run_dir(run_dir, overrides)
        interactive = not prompt
        if interactive:
            console.print("type a question, then Enter (an empty line or Ctrl-D ends)")
        questions = prompt or iter(lambda: sys.stdin.readline().strip(), "")
        for question, answer in answers(config, RunDir(run_dir), questions, show_thinking, base):
            out.print(answer if interactive else f"[bold]{question}[/]\n{answer}", highlight=False)
    except TunelabError as error:
        _fail(error)


@app.command("demo-data")
def demo_data(
    path: Annotated[Path, typer.Argument(help="CSV to write (columns text, label).")],
    per_condition: Annotated[int, typer.Option(help="Rows per condition (20 conditions).")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 0,
):
    """Write the synthetic symptom -> diagnosis demo dataset (synthetic: not for medical use)."""
    from tunelab.demo.symptoms import write_csv

    write_csv(path, per_condition, seed)
    console.print(f"wrote {path}")


def _show_metrics(metrics: dict, run_dir: Path, data_file: str | None = None) -> None:
    """The base / tuned / baseline table, then the first `evaluate.num_examples_shown` predictions."""
    from tunelab.config import config_from_run_dir
    from tunelab.evaluate.scoring import comparison_rows
    from tunelab.evaluate.stage import example_rows
    from tunelab.rundir import RunDir

    names, rows = comparison_rows(metrics)
    table = Table(title=f"test metrics (n={metrics['n_test']})")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for key, values in rows:
        table.add_row(key, *["—" if value is None else f"{value:.4f}" for value in values])
    out.print(table)
    if metrics.get("verdict"):
        out.print(metrics["verdict"], highlight=False)
    folder = RunDir(run_dir).evaluation(data_file)
    rows = example_rows(folder, config_from_run_dir(run_dir).evaluate.num_examples_shown)
    if rows:
        examples = Table(title="example predictions")
        for column in ("input", "gold", *[f"{name} answer" for name in names]):
            examples.add_column(column, overflow="ellipsis", no_wrap=True, max_width=34 if column == "input" else 20)
        for row in rows:
            examples.add_row(row["input"], row["gold"], *[row.get(f"{name}_answer", "") for name in names])
        out.print(examples)

"""The one typed config every stage reads.

A run is described by a single YAML file. Every section is a pydantic model that forbids unknown
keys, so a typo is an error naming the key and the allowed ones instead of a silently ignored
setting. `load_config` applies `--set section.key=value` overrides and returns the resolved config,
which `save_config` writes into the run directory with every default filled in.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.errors import TunelabError

DEFAULT_GPU_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
DEFAULT_SYSTEM_PROMPT = "Given the patient's symptoms, answer with the most likely diagnosis."
LABEL_PROBABILITIES_AUTO_LABELS = 32  # label scoring costs grow with the labels: auto stops here


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` as a string; learning rates need YAML 1.2 floats."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where the examples come from and how their columns map onto a chat."""

    source: str = Field(description="CSV, JSONL, JSON or Parquet file, or a Hugging Face dataset id.")
    hub_split: str = Field("train", description="Split to read when `source` is a Hub dataset id.")
    test_file: str | None = Field(None, description="Own test file with the same columns; else split.")
    validation_file: str | None = Field(None, description="Own validation file (the search scores on it) with the "
                                        "same columns; else split off by validation_size.")
    input_column: str | None = Field(None, description="User text column (label or free-text tasks).")
    label_column: str | None = Field(None, description="Class label column: a classification task.")
    completion_column: str | None = Field(None, description="Free-text answer column.")
    messages_column: str | None = Field(None, description="Column holding a list of chat messages.")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="Instruction sent first.")
    name: str | None = Field(None, description="The dataset's name in cards and reports; default: the data "
                             "file's name (its folder's for generic names such as train.csv).")
    label_map: dict[str, str] = Field(default_factory=dict, description="Labels renamed as rows are read, e.g. "
                                      "{transalte: Translate}: merge a typo or a spelling variant into its class.")
    test_size: float = Field(0.2, gt=0, lt=1, description="Share of distinct rows held out for test.")
    validation_size: float = Field(0.0, ge=0, lt=1, description="Share held out for validation.")

    @model_validator(mode="after")
    def _one_layout(self) -> DataConfig:
        if self.messages_column:
            if self.input_column or self.completion_column:
                raise ValueError("set either messages_column or input_column, not both")
            return self
        if not self.input_column:
            raise ValueError("set input_column (with label_column or completion_column) or messages_column")
        if bool(self.label_column) == bool(self.completion_column):
            raise ValueError("set exactly one of label_column and completion_column")
        held_out = (0 if self.test_file else self.test_size) + (0 if self.validation_file else self.validation_size)
        if held_out >= 1:
            raise ValueError(f"data.test_size + data.validation_size = {self.test_size + self.validation_size:g} "
                             "leaves no rows to train on (keep the sum below 1)")
        return self


class PrepareConfig(Section):
    """Vectorize, drop near-duplicates, cluster, and pick a representative training sample."""

    vectorizer: Literal["tfidf", "sentence-transformers", "base-model"] = Field(
        "tfidf", description="tfidf needs no model; sentence-transformers and base-model embed with a network."
    )
    embedding_model: str = Field(
        "all-MiniLM-L6-v2", description="Sentence encoder (path or Hub id); the packaged all-MiniLM-L6-v2 offline."
    )
    tfidf_dims: int = Field(128, gt=1, description="TruncatedSVD dimensions of the TF-IDF vectors.")
    batch_size: int = Field(64, gt=0, description="Texts per batch for neural vectorizers.")
    dedup_threshold: float | None = Field(
        0.02, ge=0, lt=1, description="Rows within this cosine distance are near-duplicate candidates; "
        "null: exact duplicates only."
    )
    dedup_word_share: float | None = Field(
        0.2, ge=0, le=1, description="A candidate is a near copy only when it changes fewer words than this share "
        "of the longer text's words, by at least one (0.2: no word under 10 words, one in 10-14, two in 15-19, five "
        "in 30), order ignored: short distinct requests are never merged. null: the vectors alone decide."
    )
    dedup_conflicts: Literal["keep", "drop"] = Field(
        "keep", description="Near copies with different labels (label noise or a deliberate contrast): keep both "
        "rows and report the pair, or drop the later row like any near copy."
    )
    k: Annotated[int, Field(gt=0)] | Literal["auto"] = Field("auto", description="Number of clusters, or auto "
                                                               "(G-means).")
    k_max: int = Field(64, gt=1, description="Upper bound on K for G-means.")
    alpha: float = Field(1e-4, gt=0, lt=1, description="Significance of the G-means normality test.")
    min_cluster_size: int = Field(8, gt=1, description="G-means never splits a cluster into smaller ones.")
    pca_dims: int = Field(32, gt=1, description="Dimensions G-means clusters and tests in.")
    sample: float | None = Field(
        None, gt=0, description="Training rows to keep: a count (> 1) or a fraction (<= 1); null: all."
    )
    strategy: Literal["kmeans", "random", "stratified"] = Field(
        "kmeans", description="kmeans: share the budget among clusters (within labels) by size."
    )
    within_cluster: Literal["random", "centroid", "k-center"] = Field(
        "random", description="How rows are picked inside a cluster."
    )
    min_per_label: int = Field(1, ge=0, description="Every label keeps at least this many sampled rows.")
    random_baselines: int = Field(20, ge=0, description="Random samples the representativeness is compared to.")


class ModelConfig(Section):
    """The base model: a Hub id, a local directory, or a local GGUF file."""

    name_or_path: str = Field(DEFAULT_GPU_MODEL, description="Hub id, model directory or .gguf file.")
    gguf_file: str | None = Field(None, description="GGUF file name inside `name_or_path` (a directory).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the Hub; off for safety.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight storage. auto: bfloat16 on a GPU that supports it (inference, and the frozen "
        "base of LoRA/QLoRA), float32 for full fine-tuning (fp32 master weights under bf16 autocast) and on CPU."
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    cache_dir: str | None = Field(None, description="Where converted GGUF models are cached.")
    hub_id: str | None = Field(None, description="The base's Hub id when name_or_path is a local copy: cards and "
                               "adapters name it (never this machine's path); needed to publish an adapter.")


class LoraSettings(Section):
    r: int = Field(16, gt=0, description="Rank of the update BA.")
    alpha: int = Field(32, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input. 0 skips that pass: "
                           "steps ~1.5x faster on CPU; try 0.05-0.1 if validation loss rises while train loss falls.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt; all-linear adapts every linear layer."
    )


class TrainConfig(Section):
    method: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full: all weights; lora: W + BA adapters; qlora: 4-bit NF4 base + LoRA."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = Field(2e-4, gt=0)
    per_device_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Positive: stop after this many optimizer steps (beats epochs).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune: uniform noise of this scale (e.g. 5) on "
                                        "the input embeddings while training, never at inference; it often helps "
                                        "on small instruction data. null: off.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Training targets keep 1 - this on the right "
                                   "token and share the rest over the vocabulary (softer, less overconfident "
                                   "answers); evaluation losses stay plain cross-entropy. 0: off.")
    max_length: int = Field(512, gt=8, description="Token limit per example; longer prompts are cut.")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(100, gt=0, description="Checkpoint every this many optimizer steps.")
    save_total_limit: int = Field(2, gt=0)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less "
                                                             "memory, ~30% more compute.")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="Autocast matmuls to half precision, weights and optimizer stay fp32. auto: bf16 where "
        "the hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp16 on older GPUs, else no.")
    pack_row_tokens: int | None = Field(
        256, gt=0, description="Pack each batch's examples into rows of at most this many tokens (position_ids "
        "restart per example, no cross-example attention); under FlashAttention the whole batch becomes one row "
        "(its varlen kernel keeps examples apart only then); null: pad each example to the batch's longest.")
    answer_only_lm_head: bool = Field(True, description="Apply the LM head and the loss only where an answer "
                                                        "token is predicted (same loss, less compute and memory).")
    group_by_length: bool = Field(True, description="When packing is off: batch examples of similar length "
                                  "together (less padding). With packing, batches stay random (packing removes the "
                                  "padding, and length-sorted batches learned worse in bench/train_throughput.py).")
    liger_kernels: bool = Field(True, description="On CUDA, use Liger kernels (RMSNorm, RoPE, SwiGLU) when "
                                                  "liger-kernel is installed.")
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit",
                       "paged_adamw_32bit"] = Field(
        "auto", description="auto: transformers' AdamW (fused where torch has it); adamw_8bit / paged_adamw_*: "
        "bitsandbytes' optimizers on CUDA (8-bit state; paged spills to CPU memory instead of failing on a memory "
        "spike).")
    num_threads: int | None = Field(None, gt=0, description="CPU threads; default: all cores.")
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers (transformers' integrations) for training and each "
        "search trial: tensorboard writes RUN_DIR/tensorboard/<run>, mlflow a local RUN_DIR/mlflow.db unless "
        "mlflow_tracking_uri or MLFLOW_TRACKING_URI says otherwise. Default: none.")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server or database; credentials in "
                                            "it are redacted from written configs.")
    evaluate_after: bool = Field(True, description="Run `tunelab evaluate` when training ends.")
    validation_loss_each_epoch: bool = Field(False, description="Also compute the loss over the whole validation "
                                             "split at each epoch end (a full pass each time; shown in loss.png).")


class Range(Section):
    """A continuous or integer range for TPE: `{low: 1e-5, high: 1e-3, log: true}`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low {self.low:g} is above high {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self


class SearchConfig(Section):
    """Hyperparameter search on the validation split; the winner is written as best.yaml."""

    space: dict[str, list[Any] | Range] = Field(
        default_factory=dict,
        description="Dotted config key -> list of values (grid) or {low, high, log} range (tpe), "
        "e.g. train.learning_rate: [1e-4, 3e-4].",
    )
    strategy: Literal["grid", "halving", "tpe"] = Field(
        "grid", description="grid: every combination; halving: grid with successive halving; tpe: n_trials."
    )
    metric: Literal["auto", "loss", "accuracy", "macro_f1"] = Field(
        "auto", description="Validation objective; auto: accuracy when the data has labels, else loss."
    )
    n_trials: int = Field(20, gt=0, description="Trials for tpe (all workers together).")
    storage: str | None = Field(None, description="Optuna RDB URL; default sqlite:///RUN_DIR/search/study.db.")
    study_name: str = "tunelab"
    eval_examples: int | None = Field(64, gt=0, description="Validation rows (label-stratified) scored at each "
                                      "intermediate report.")
    validation_examples: int | None = Field(
        512, gt=0, description="Validation rows (label-stratified, the same for every trial) each finished trial is "
        "ranked on: a bounded cost per trial; null: the whole validation split.")
    reports_per_trial: int = Field(9, gt=0, description="Evenly spaced intermediate validation scores per trial "
                                   "(the validation curves).")
    reduction_factor: int = Field(3, gt=1, description="Halving keeps the best 1/reduction_factor at each rung.")
    rungs: int = Field(3, gt=0, description="Halving compares trials after 1/η^rungs, …, 1/η of their training "
                       "(η = reduction_factor; 3 and 3: after 1/27, 1/9 and 1/3); a trial that reached the end "
                       "is never pruned.")
    tie_margin: float = Field(0.01, ge=0, description="Halving also promotes a trial whose rung score is within "
                              "this share of the best score at that rung (near-ties with the leader on a validation "
                              "subset are noise); 0: Optuna's plain rule.")
    intermediate: Literal["loss", "metric"] = Field(
        "loss", description="What the intermediate scores (halving rungs, validation curves) measure: validation "
        "answer loss (cheap, and it separates configs early, when accuracy is still 0 for all and ties promote "
        "everyone), or the search metric itself. Finished trials are always ranked on the metric.")


class DecodingConfig(Section):
    """How answers are generated: greedy (default, reproducible), sampling or beam search."""

    strategy: Literal["greedy", "sampling", "beam"] = "greedy"
    temperature: float = Field(0.7, gt=0, description="sampling: lower is more deterministic.")
    top_k: int = Field(50, ge=0, description="sampling: keep the k most likely tokens (0: all).")
    top_p: float = Field(0.95, gt=0, le=1, description="sampling: nucleus mass kept.")
    num_beams: int = Field(4, gt=1, description="beam: beams kept.")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeating tokens.")
    seed: int = Field(0, ge=0, lt=2**32, description="sampling: seed, so a sampled evaluation can be repeated.")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.strategy == "sampling":
            return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                    "repetition_penalty": self.repetition_penalty}
        beams = {"num_beams": self.num_beams, "early_stopping": True} if self.strategy == "beam" else {}
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                "repetition_penalty": self.repetition_penalty, **beams}


class EvaluateConfig(Section):
    max_new_tokens: int | None = Field(None, gt=0, description="Answer budget in new tokens; null: what fits the "
                                       "model, 32 for plain instruct models, 1024 when the chat template opens a "
                                       "<think> block (reasoning models). Unfinished thinking is counted "
                                       "(truncated_thinking_rate), never silently scored as no answer.")
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    batch_size: int = Field(16, gt=0)
    compare_base: bool = Field(True, description="Also score the untuned base model, same prompts.")
    constrain_to_labels: bool = Field(True, description="Label tasks: decode only the known labels (a token "
                                      "trie through transformers' generate; reasoning models think freely first), "
                                      "so base and tuned are scored on the same footing; free answers are scored too "
                                      "(free_accuracy). Also used by the search objective and `tunelab generate`.")
    label_probabilities: bool | Literal["auto"] = Field(
        "auto", description="Label tasks: score every label's log-likelihood after the prompt (one prompt pass, "
        "labels on its KV cache) for top-1/top-3 accuracy, calibration error, a reliability plot and each row's "
        f"top-3 labels. auto: with up to {LABEL_PROBABILITIES_AUTO_LABELS} labels (SmolLM2 on CPU: 1.8x the cost of "
        "free generation at 24 labels, 10.7x at 151; bench/RESULTS.md).")
    baseline: bool = Field(True, description="Label tasks: also fit TF-IDF + logistic regression on the run's "
                           "training split and score it on the same examples (seconds), to show whether "
                           "fine-tuning was worth it.")
    max_examples: int | None = Field(None, gt=0, description="Score a label-stratified subset of N test rows "
                                     "(the run's seed; labels it leaves out are named); null: all.")
    num_examples_shown: int = Field(5, ge=0, description="Example predictions printed at the end.")

    def scores_label_probabilities(self, labels: int) -> bool:
        """`label_probabilities` resolved for a task with this many labels."""
        if self.label_probabilities == "auto":
            return labels <= LABEL_PROBABILITIES_AUTO_LABELS
        return self.label_probabilities


class PublishConfig(Section):
    """Where and how the model is published; without repo_id, publish only builds the folder (dry run)."""

    repo_id: str | None = Field(None, description="OWNER/NAME on the Hub (or a Hub-compatible HF_ENDPOINT).")
    private: bool = True
    allow_public: bool = Field(False, description="Push into a repository that already exists and is public "
                               "although `private` is on (otherwise refused).")
    merged: bool = Field(False, description="Upload full weights with the LoRA merged in, not the adapter.")
    dry_run: bool = Field(False, description="Build publish/ and list it, upload nothing.")
    license: str | None = Field(None, description="License id for the card, e.g. apache-2.0 (check the base's).")
    verify: bool = Field(True, description="After the push, download the repo and check that it gives the "
                                           "answers of eval/predictions.jsonl.")
    intended_use: str = Field(
        "Answers short questions like those of its training data, in their style. It inherits the base model's "
        "limits and biases, can be confidently wrong, and was evaluated only on the held-out split below.",
        description="The card's intended-use text.")
    disclaimer: str | None = Field(None, description="A warning the card shows in bold, e.g. 'Not a medical "
                                   "device and not medical advice; a clinician decides.'")
    verify_prompts: int = Field(3, ge=1, description="At least this many test prompts are compared in that check: "
                                "whole evaluation batches, so the answers must match exactly.")


class ServeConfig(Section):
    """`tunelab serve`: an OpenAI-compatible (and Vertex AI-ready) HTTP server for the tuned model."""

    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 to accept other machines (a container).")
    port: int = Field(8000, ge=0, lt=65536, description="Port; AIP_HTTP_PORT wins when set (Vertex AI).")
    max_waiting: int = Field(32, ge=0, description="Requests that may wait for the model; more get HTTP 503.")
    workers: int = Field(1, gt=0, description="Copies of the model answering at once, each on its share of the "
                         "cores (train.num_threads, default all): on a CPU 2 copies on 1 core each answer 1.6-1.8x "
                         "the requests/s of 1 copy on 2 cores (bench/RESULTS.md), each request a little slower; "
                         "every copy holds its own weights in memory (llama.cpp shares the mapped file). For "
                         "serve.engine llama-server: its parallel slots, batched in one model (16 for load).")
    max_tokens: int = Field(512, gt=0, description="Largest max_tokens a request may ask for.")
    engine: Literal["auto", "transformers", "llama.cpp", "llama-server"] = Field(
        "auto", description="llama.cpp: a GGUF file of RUN_DIR/export/gguf/ (tunelab export -f gguf) in this process; "
        "llama-server: the same file behind llama.cpp's own server, its serve.workers slots batched together (the "
        "fastest under load; no label probabilities); transformers: the run's model as evaluated; auto: llama.cpp "
        "when installed and the run has a GGUF export, else transformers.")
    gguf: Literal["auto", "f16", "q8_0", "q4_k_m"] = Field("auto", description="Which exported GGUF llama.cpp serves; "
                                                          "auto: the smallest.")
    context: int = Field(4096, gt=0, description="llama.cpp's context in tokens (at most the model's).")


class TunelabConfig(Section):
    data: DataConfig
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    output_dir: str = Field("runs/default", description="The run directory.")
    seed: int = Field(42, ge=0, lt=2**32, description="Split, sampling and training seed (0 to 2**32 - 1).")


def _set_dotted(tree: dict[str, Any], dotted: str, raw_value: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (numbers, lists, booleans)."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise TunelabError(f"--set {dotted}: '{key}' is not a section")
        node = child
    try:
        node[keys[-1]] = parse_yaml(raw_value) if raw_value != "" else ""
    except yaml.YAMLError as exc:
        raise TunelabError(f"--set {dotted}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `path`, to list its allowed keys in errors."""
    model: type[BaseModel] = TunelabConfig
    for key in path[:-1]:
        field = model.model_fields.get(str(key))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _config_keys(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The config keys of an error location, without the union branch pydantic appends
    (`prepare.k.constrained-int` is `prepare.k`)."""
    model: type[BaseModel] | None = TunelabConfig
    keys = []
    mapping = False
    for part in loc:
        if mapping:  # the entry of a mapping such as search.space: 'search.space.train.learning_rate'
            keys.append(part)
            break
        if keys and (part not in model.model_fields if model is not None else not isinstance(part, int)):
            break  # past a leaf: a union branch such as 'constrained-int' (list positions stay)
        keys.append(part)
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field else None
        mapping = typing.get_origin(annotation) is dict
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return tuple(keys)


def _describe(error: ValidationError, origin: str, overridden: set[str]) -> str:
    """One line naming the key, and where it came from: the file, or the --set that introduced it."""
    # An explicit check's message (value_error) says more than a union's other branches ("should be a list").
    first = next((e for e in error.errors() if e["type"] == "value_error"), error.errors()[0])
    keys = first["loc"] if first["type"] == "extra_forbidden" else _config_keys(first["loc"])
    location = ".".join(str(part) for part in keys)
    if location in overridden:
        origin = f"--set {location}"
    if first["type"] == "extra_forbidden":
        owner = _model_at(first["loc"])
        if owner is None:
            return f"{origin}: unknown key '{location}'"
        allowed = sorted(owner.model_fields)
        close = difflib.get_close_matches(str(first["loc"][-1]), allowed, n=1)
        prefix = ".".join(str(part) for part in first["loc"][:-1])
        hint = f"did you mean {'.'.join(filter(None, [prefix, close[0]]))}? " if close else ""
        return f"{origin}: unknown key '{location}' ({hint}allowed: {', '.join(allowed)})"
    if first["type"] == "missing":
        return f"{origin}: missing required key '{location}'"
    where = f"'{location}'" if location else "config"
    return f"{origin}: {where}: {first['msg'].removeprefix('Value error, ')}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> TunelabConfig:
    """Read, override and validate a YAML config; any problem is one TunelabError line."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    try:
        tree = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TunelabError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise TunelabError(f"{path}: the top level must be a mapping of sections")
    overridden = set()
    for override in overrides or []:
        if "=" not in override:
            raise TunelabError(f"--set {override}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
        dotted, raw_value = override.split("=", 1)
        _set_dotted(tree, dotted.strip(), raw_value.strip())
        overridden.add(dotted.strip())
    try:
        config = TunelabConfig.model_validate(tree)
    except ValidationError as exc:
        raise TunelabError(_describe(exc, str(path), overridden)) from None
    return _resolve_relative_paths(config, path.parent)


def _resolve_relative_paths(config: TunelabConfig, base: Path) -> TunelabConfig:
    """Data and model paths in a config are relative to the config file, like in most tools."""
    for section, key in (("data", "source"), ("data", "test_file"), ("data", "validation_file"),
                         ("model", "name_or_path")):
        owner = getattr(config, section)
        value = getattr(owner, key)
        if value and not Path(value).is_absolute() and (base / value).exists():
            setattr(owner, key, str((base / value).resolve()))
    return config


def redact_url(url: str) -> str:
    """`scheme://user:password@host/...` with the password replaced by `***`."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def config_dump(config: TunelabConfig) -> dict[str, Any]:
    """The config as written to files (config.yaml, best.yaml): credentials in the study and MLflow URLs
    are redacted (give the password through PGPASSWORD or ~/.pgpass instead)."""
    tree = config.model_dump(mode="json")
    for section, key in (("search", "storage"), ("train", "mlflow_tracking_uri")):
        if tree[section][key]:
            tree[section][key] = redact_url(tree[section][key])
    return tree


def save_config(config: TunelabConfig, path: Path) -> None:
    from tunelab.rundir import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_dump(config), sort_keys=False))


def config_from_run_dir(run_dir: Path, overrides: list[str] | None = None) -> TunelabConfig:
    """The resolved config a run was started with (optionally overridden, e.g. the answer budget)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise TunelabError(f"{run_dir}: not a tunelab run directory (no config.yaml)")
    return load_config(path, overrides)

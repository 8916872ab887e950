"""The model a server answers with, one request at a time: the run's tuned model through transformers, or
its GGUF export through llama.cpp (several times faster on a CPU). Both render prompts with the run's
chat template and answer label tasks with a label, as the evaluation did."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.chat import answer_budget, opens_thinking, prompt_ids
from tunelab.data.labels import known_labels
from tunelab.errors import TunelabError
from tunelab.evaluate.constrain import label_completion_ids
from tunelab.evaluate.generation import generate_answers, label_constraint
from tunelab.evaluate.label_scores import label_distributions, label_log_likelihoods
from tunelab.model.adapters import load_tuned
from tunelab.model.llama_cpp import compiled_grammar, gguf_metadata, llama_cpp_module, open_gguf
from tunelab.rundir import RunDir


class TransformersEngine:
    def __init__(self, config: TunelabConfig, run_dir: RunDir):
        self.config = config
        self.model, self.tokenizer, _ = load_tuned(config, run_dir)
        self.model.eval()
        self.labels = known_labels(run_dir, []) if config.data.label_column else []
        self.constraint = label_constraint(config, self.tokenizer, self.labels)
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()  # generation is compute-bound and the tokenizer is shared

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(prompt_ids(self.tokenizer, messages))

    def _example(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"messages": [*messages, {"role": "assistant", "content": ""}]}

    def label_probabilities(self, messages: list[dict[str, str]]) -> list[tuple[str, float]]:
        """Every label's probability for this prompt (its completion's likelihood, softmax over labels)."""
        with self.lock:
            scores = label_log_likelihoods(self.model, self.tokenizer, [self._example(messages)], self.labels,
                                           self.config.data.system_prompt, progress=False)
        return ranked(self.labels, scores)

    def answer(self, messages: list[dict[str, str]], max_tokens: int | None) -> str:
        with self.lock:
            return generate_answers(self.model, self.tokenizer, [self._example(messages)], max_tokens, 1, "serve",
                                    self.config.evaluate.decoding, self.constraint, progress=False)[0].strip()

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        """The answer's text pieces as transformers' streamer yields them."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        self.lock.acquire()
        worker = threading.Thread(target=self._generate_into, args=(messages, max_tokens, streamer), daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    def _generate_into(self, messages, max_tokens, streamer) -> None:
        try:
            generate_answers(self.model, self.tokenizer, [self._example(messages)], max_tokens, 1, "serve",
                             self.config.evaluate.decoding, self.constraint, streamer=streamer, progress=False)
        except BaseException:
            streamer.end()  # the reader stops instead of waiting for tokens that will not come
            raise
        finally:
            self.lock.release()


class LlamaCppEngine:
    """A GGUF file of RUN_DIR/export/gguf/ through llama.cpp: greedy (or sampled) answers, labels under a
    grammar, the run's tokenizer rendering the prompt."""

    def __init__(self, config: TunelabConfig, run_dir: RunDir, gguf: Path):
        from transformers import AutoTokenizer

        decoding = config.evaluate.decoding
        if decoding.strategy == "beam":
            raise TunelabError("serve.engine llama.cpp decodes greedy or by sampling; evaluate.decoding beam needs "
                               "serve.engine transformers")
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(run_dir.model)
        self.labels = known_labels(run_dir, []) if config.data.label_column else []
        constrained = self.labels and config.evaluate.constrain_to_labels and not opens_thinking(self.tokenizer)
        self.grammar = compiled_grammar(self.labels if constrained else None)
        self.budget = answer_budget(self.tokenizer, config.evaluate.max_new_tokens)
        if self.grammar is not None:
            self.budget = max(self.budget, *(len(self.tokenizer(label)["input_ids"]) + 1 for label in self.labels))
        self.context = min(config.serve.context, int(gguf_metadata(gguf)["context_length"]))
        self.llama = open_gguf(gguf, self.context, config.train.num_threads)
        self.sampling = ({"temperature": decoding.temperature, "top_p": decoding.top_p, "seed": decoding.seed}
                         if decoding.strategy == "sampling" else {"temperature": 0.0, "top_k": 1})
        self.lock = threading.Lock()  # one llama.cpp context: one sequence at a time

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(prompt_ids(self.tokenizer, messages))

    def _completion(self, messages, max_tokens: int | None, stream: bool):
        return self.llama.create_completion(prompt_ids(self.tokenizer, messages), max_tokens=max_tokens or self.budget,
                                            grammar=self.grammar, stream=stream, **self.sampling)

    def answer(self, messages: list[dict[str, str]], max_tokens: int | None) -> str:
        with self.lock:
            return self._completion(messages, max_tokens, stream=False)["choices"][0]["text"].strip()

    def label_probabilities(self, messages: list[dict[str, str]]) -> list[tuple[str, float]]:
        """As the transformers engine: each label's completion scored after the prompt, token by token on
        llama.cpp's cache (rewound to the prompt for each label), softmax over the labels' totals."""
        import numpy as np

        completions = label_completion_ids(self.tokenizer, self.labels, self.config.data.system_prompt)
        prompt = prompt_ids(self.tokenizer, messages)
        totals = np.zeros((1, len(self.labels)))
        with self.lock:
            self.llama.reset()
            self.llama.eval(prompt)
            after_prompt = self._last_log_probabilities()
            for column, ids in enumerate(completions):
                self.llama.n_tokens = len(prompt)  # rewind: the next eval overwrites what followed
                total = after_prompt[ids[0]]
                for previous, token in itertools.pairwise(ids):
                    self.llama.eval([previous])
                    total += self._last_log_probabilities()[token]
                totals[0, column] = total
            self.llama.reset()
        return ranked(self.labels, totals)

    def _last_log_probabilities(self):
        """Log-softmax of the logits llama.cpp computed for the last evaluated token (llama-cpp-python
        keeps no copy of them unless every position's logits are kept)."""
        import numpy as np

        pointer = llama_cpp_module().llama_get_logits_ith(self.llama.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.llama.n_vocab(),)).astype(np.float64)
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        with self.lock:
            for chunk in self._completion(messages, max_tokens, stream=True):
                yield chunk["choices"][0]["text"]


def ranked(labels: list[str], scores) -> list[tuple[str, float]]:
    """(label, probability) pairs, most probable first."""
    probabilities = label_distributions(scores)[0]
    return sorted(zip(labels, map(float, probabilities), strict=True), key=lambda pair: -pair[1])


def exported_gguf(run_dir: RunDir, quant: str) -> Path | None:
    """The GGUF file of RUN_DIR/export/gguf/ to serve: `quant`, or (auto) the smallest one exported."""
    record_path = run_dir.export("gguf") / "export.json"
    if not record_path.is_file():
        return None
    files = json.loads(record_path.read_text())["files"]
    if quant != "auto":
        if quant not in files:
            raise TunelabError(f"serve.gguf {quant}: {record_path.parent} holds {', '.join(files)} "
                               f"(tunelab export {run_dir.root} -f gguf -q {quant})")
        return record_path.parent / files[quant]["file"]
    return record_path.parent / min(files.values(), key=lambda f: f["bytes"])["file"]


Engine = TransformersEngine | LlamaCppEngine

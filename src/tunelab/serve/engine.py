"""The model a server answers with: the run's tuned model through transformers, or its GGUF export
through llama.cpp (several times faster on a CPU), in this process or behind llama.cpp's own server.
All render prompts with the run's chat template and answer label tasks with a label, as the evaluation
did. The in-process engines hold `serve.workers` copies of the model, each answering one request at a
time on its share of the cores: on a CPU, two copies of a small model on one core each answer more
requests per second than one copy on both; llama-server instead batches its `serve.workers` slots in
one model (bench/RESULTS.md)."""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from tunelab.model.llama_cpp import compiled_grammar, gguf_metadata, label_grammar, llama_cpp_module, open_gguf
from tunelab.rundir import RunDir


class Copies:
    """The engine's copies of the model, each lent to one request at a time. A request waits for a free
    copy in a first-come, first-served line: a returned copy goes to the longest-waiting request, so no
    request is overtaken by later ones (a plain lock or queue lets newcomers barge in, and under load
    some requests wait many times longer than the rest)."""

    def __init__(self, copies: list):
        self.first = copies[0]
        self._free = list(copies)
        self._line: collections.deque[tuple[threading.Event, list]] = collections.deque()
        self._guard = threading.Lock()

    def borrow(self):
        with self._guard:
            if self._free and not self._line:
                return self._free.pop()
            turn: tuple[threading.Event, list] = (threading.Event(), [])
            self._line.append(turn)
        turn[0].wait()
        return turn[1][0]

    def give_back(self, copy) -> None:
        with self._guard:
            if self._line:
                called, hand = self._line.popleft()
                hand.append(copy)
                called.set()
            else:
                self._free.append(copy)

    @contextmanager
    def lent(self):
        copy = self.borrow()
        try:
            yield copy
        finally:
            self.give_back(copy)


def serving_cores(config: TunelabConfig) -> int:
    """The cores the server answers on: train.num_threads, default all of them."""
    return config.train.num_threads or os.cpu_count() or 1


def threads_per_copy(config: TunelabConfig) -> int:
    """Each copy's share of the cores."""
    return max(1, serving_cores(config) // config.serve.workers)


@dataclass
class TransformersCopy:
    model: Any
    tokenizer: Any
    constraint: Any  # the label trie, built on this copy's tokenizer


class TransformersEngine:
    def __init__(self, config: TunelabConfig, run_dir: RunDir):
        import torch

        self.config = config
        self.labels = known_labels(run_dir, []) if config.data.label_column else []
        torch.set_num_threads(threads_per_copy(config))  # torch's pool is shared: each generation gets this many
        self.copies = Copies([self._copy(run_dir) for _ in range(config.serve.workers)])
        self.tokenizer = self.copies.first.tokenizer
        self.label_completions = label_completion_ids(self.tokenizer, self.labels, config.data.system_prompt)
        self.context = int(getattr(self.copies.first.model.config, "max_position_embeddings", 2048))

    def _copy(self, run_dir: RunDir) -> TransformersCopy:
        model, tokenizer, _ = load_tuned(self.config, run_dir)
        model.eval()
        return TransformersCopy(model, tokenizer, label_constraint(self.config, tokenizer, self.labels))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(prompt_ids(self.tokenizer, messages))

    def _example(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"messages": [*messages, {"role": "assistant", "content": ""}]}

    def label_probabilities(self, messages: list[dict[str, str]]) -> list[tuple[str, float]]:
        """Every label's probability for this prompt (its completion's likelihood, softmax over labels)."""
        with self.copies.lent() as copy:
            scores = label_log_likelihoods(copy.model, copy.tokenizer, [self._example(messages)],
                                           self.label_completions, progress=False)
        return ranked(self.labels, scores)

    def _generate(self, copy: TransformersCopy, messages, max_tokens: int | None, streamer=None) -> list[str]:
        return generate_answers(copy.model, copy.tokenizer, [self._example(messages)], max_tokens, 1, "serve",
                                self.config.evaluate.decoding, copy.constraint, streamer=streamer, progress=False)

    def answer(self, messages: list[dict[str, str]], max_tokens: int | None) -> str:
        with self.copies.lent() as copy:
            return self._generate(copy, messages, max_tokens)[0].strip()

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        """The answer's text pieces as transformers' streamer yields them."""
        from transformers import TextIteratorStreamer

        copy = self.copies.borrow()  # given back by the generating thread when it ends
        streamer = TextIteratorStreamer(copy.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        worker = threading.Thread(target=self._generate_into, args=(copy, messages, max_tokens, streamer),
                                  daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    def _generate_into(self, copy: TransformersCopy, messages, max_tokens, streamer) -> None:
        try:
            self._generate(copy, messages, max_tokens, streamer)
        except BaseException:
            streamer.end()  # the reader stops instead of waiting for tokens that will not come
            raise
        finally:
            self.copies.give_back(copy)


class GgufEngine:
    """What both llama.cpp engines share: a GGUF file of RUN_DIR/export/gguf/, the run's tokenizer rendering
    the prompt, greedy (or sampled) answers, labels under a grammar."""

    def __init__(self, config: TunelabConfig, run_dir: RunDir, gguf: Path):
        from transformers import AutoTokenizer

        decoding = config.evaluate.decoding
        if decoding.strategy == "beam":
            raise TunelabError(f"serve.engine {config.serve.engine} decodes greedy or by sampling; evaluate.decoding "
                               "beam needs serve.engine transformers")
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(run_dir.model)
        self.labels = known_labels(run_dir, []) if config.data.label_column else []
        constrained = self.labels and config.evaluate.constrain_to_labels and not opens_thinking(self.tokenizer)
        self.grammar_text = label_grammar(self.labels) if constrained else None
        self.budget = answer_budget(self.tokenizer, config.evaluate.max_new_tokens)
        if self.grammar_text is not None:
            self.budget = max(self.budget, *(len(self.tokenizer(label)["input_ids"]) + 1 for label in self.labels))
        self.context = min(config.serve.context, int(gguf_metadata(gguf)["context_length"]))
        self.sampling = ({"temperature": decoding.temperature, "top_p": decoding.top_p, "seed": decoding.seed}
                         if decoding.strategy == "sampling" else {"temperature": 0.0, "top_k": 1})

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(prompt_ids(self.tokenizer, messages))


class LlamaCppEngine(GgufEngine):
    """llama.cpp in this process (llama-cpp-python): `serve.workers` copies, one request each at a time."""

    def __init__(self, config: TunelabConfig, run_dir: RunDir, gguf: Path):
        super().__init__(config, run_dir, gguf)
        self.label_completions = label_completion_ids(self.tokenizer, self.labels, config.data.system_prompt)
        self.grammar = compiled_grammar(self.grammar_text)
        self.copies = Copies([open_gguf(gguf, self.context, threads_per_copy(config))
                              for _ in range(config.serve.workers)])

    def _completion(self, llama, messages, max_tokens: int | None, stream: bool):
        return llama.create_completion(prompt_ids(self.tokenizer, messages), max_tokens=max_tokens or self.budget,
                                       grammar=self.grammar, stream=stream, **self.sampling)

    def answer(self, messages: list[dict[str, str]], max_tokens: int | None) -> str:
        with self.copies.lent() as llama:
            return self._completion(llama, messages, max_tokens, stream=False)["choices"][0]["text"].strip()

    def label_probabilities(self, messages: list[dict[str, str]]) -> list[tuple[str, float]]:
        """As the transformers engine: each label's completion scored after the prompt, token by token on
        llama.cpp's cache (rewound to the prompt for each label), softmax over the labels' totals."""
        import numpy as np

        prompt = prompt_ids(self.tokenizer, messages)
        totals = np.zeros((1, len(self.labels)))
        with self.copies.lent() as llama:
            llama.reset()
            llama.eval(prompt)
            after_prompt = last_log_probabilities(llama)
            for column, ids in enumerate(self.label_completions):
                llama.n_tokens = len(prompt)  # rewind: the next eval overwrites what followed
                total = after_prompt[ids[0]]
                for previous, token in itertools.pairwise(ids):
                    llama.eval([previous])
                    total += last_log_probabilities(llama)[token]
                totals[0, column] = total
            llama.reset()
        return ranked(self.labels, totals)

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        with self.copies.lent() as llama:
            for chunk in self._completion(llama, messages, max_tokens, stream=True):
                yield chunk["choices"][0]["text"]


class LlamaServerEngine(GgufEngine):
    """llama.cpp's own HTTP server (`llama-server`, built into the venv by `make llama-cpp`) as a child
    process on 127.0.0.1, tunelab's app in front of it (routes, checks, system prompt, label grammar).
    Its `serve.workers` parallel slots decode together in one batch, which an in-process `Llama` (one
    request at a time per copy) cannot: several times the requests/s under load (bench/RESULTS.md).
    Label probabilities stay with the in-process engines."""

    STARTUP_SECONDS = 120

    def __init__(self, config: TunelabConfig, run_dir: RunDir, gguf: Path):
        super().__init__(config, run_dir, gguf)
        binary = shutil.which("llama-server", path=str(Path(sys.executable).parent)) or shutil.which("llama-server")
        if binary is None:
            raise TunelabError("serve.engine llama-server: no llama-server program (make llama-cpp builds it into "
                               ".venv/bin)")
        slots = config.serve.workers
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [binary, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "--parallel", str(slots),
             "--ctx-size", str(self.context * slots), "--threads", str(serving_cores(config)),
             "--no-webui", "--log-verbosity", "2"],  # warnings and errors only: the log stays small
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_dies_with_parent)
        atexit.register(self.close)
        self._wait_until_ready(gguf)

    def _wait_until_ready(self, gguf: Path) -> None:
        deadline = time.monotonic() + self.STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                last = self.log.read().decode(errors="replace").strip().splitlines()[-1:]
                raise TunelabError(f"llama-server could not serve {gguf}: {' '.join(last) or 'it exited'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise TunelabError(f"llama-server did not load {gguf} within {self.STARTUP_SECONDS} s")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _post(self, messages, max_tokens: int | None, stream: bool):
        body = {"prompt": prompt_ids(self.tokenizer, messages), "n_predict": max_tokens or self.budget,
                "cache_prompt": True, "stream": stream, **self.sampling}
        if self.grammar_text is not None:
            body["grammar"] = self.grammar_text
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/completion", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=600)

    def answer(self, messages: list[dict[str, str]], max_tokens: int | None) -> str:
        with self._post(messages, max_tokens, stream=False) as response:
            return json.load(response)["content"].strip()

    def stream(self, messages: list[dict[str, str]], max_tokens: int | None) -> Iterator[str]:
        """The pieces of llama-server's server-sent events, as it decodes them."""
        with self._post(messages, max_tokens, stream=True) as response:
            for line in response:
                if line.startswith(b"data: "):
                    event = json.loads(line[len(b"data: "):])
                    yield event.get("content", "")
                    if event.get("stop"):
                        return


def _dies_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when tunelab's process ends, even by SIGKILL."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def last_log_probabilities(llama):
    """Log-softmax of the logits llama.cpp computed for the last evaluated token (llama-cpp-python keeps
    no copy of them unless every position's logits are kept)."""
    import numpy as np

    pointer = llama_cpp_module().llama_get_logits_ith(llama.ctx, -1)
    logits = np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),)).astype(np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


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


Engine = TransformersEngine | LlamaCppEngine | LlamaServerEngine

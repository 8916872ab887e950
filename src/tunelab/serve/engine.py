"""The model a server answers with: the run's tuned model through transformers, one request at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from tunelab.config import TunelabConfig
from tunelab.data.chat import render_prompt
from tunelab.data.labels import known_labels
from tunelab.evaluate.generation import generate_answers, label_constraint
from tunelab.model.adapters import load_tuned
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
        return len(self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def _example(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"messages": [*messages, {"role": "assistant", "content": ""}]}

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

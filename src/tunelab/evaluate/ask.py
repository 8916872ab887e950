"""Ask a trained model questions: `tunelab generate RUN_DIR`, with the run's own chat format."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tunelab.config import TunelabConfig
from tunelab.data.chat import strip_thinking
from tunelab.data.labels import known_labels
from tunelab.evaluate.generation import generate_answers, label_constraint
from tunelab.model.adapters import load_tuned
from tunelab.rundir import RunDir


def chat_example(config: TunelabConfig, prompt: str) -> dict:
    """The prompt as training saw it: the run's system prompt, then the user's text."""
    system = [{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []
    return {"messages": [*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]}


def answers(config: TunelabConfig, run_dir: RunDir, prompts: Iterable[str], show_thinking: bool,
            base: bool = False) -> Iterator[tuple[str, str]]:
    """(prompt, answer) for each prompt, one at a time so an interactive session answers as it goes.

    For label tasks the answer is one of the training labels unless `evaluate.constrain_to_labels` is off.
    """
    tuned, tokenizer, base_context = load_tuned(config, run_dir)
    tuned.eval()
    evaluate = config.evaluate
    labels = known_labels(run_dir, []) if config.data.label_column else None
    constraint = label_constraint(config, tokenizer, labels)
    for prompt in prompts:
        def generate(model, prompt=prompt):
            return generate_answers(model, tokenizer, [chat_example(config, prompt)], evaluate.max_new_tokens,
                                    1, "answer", evaluate.decoding, constraint)[0]
        if base:
            with base_context() as model:
                text = generate(model)
        else:
            text = generate(tuned)
        yield prompt, text.strip() if show_thinking else strip_thinking(text)

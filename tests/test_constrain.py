"""Answers restricted to the label set (through transformers' own generate) and answer budgets that fit
reasoning models, on a random tiny model."""

import copy

import pytest
from transformers import AutoModelForCausalLM

from conftest import make_label_rows
from test_chat import R1_TEMPLATE
from tunelab.config import DecodingConfig, TunelabConfig
from tunelab.data.chat import answer_budget
from tunelab.evaluate.constrain import LabelTrie, label_completion_ids
from tunelab.evaluate.generation import generate_answers, label_constraint
from tunelab.evaluate.scoring import extract_answer
from tunelab.evaluate.stage import score_model

LABELS = ["Flu", "Migraine", "Eczema", "Cold", "Cold sore", "Common Cold"]  # shared prefixes on purpose


def _examples(count: int = 12) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Name the diagnosis."},
                          {"role": "user", "content": row["text"]},
                          {"role": "assistant", "content": row["label"]}]} for row in make_label_rows()[:count]]


@pytest.mark.parametrize("strategy", ["greedy", "sampling", "beam"])
def test_every_constrained_answer_is_a_label_even_from_a_random_model(tiny_model_dir, tiny_tokenizer, strategy):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = _examples()
    free = generate_answers(model, tiny_tokenizer, examples, 8, 4, "free")
    assert not {extract_answer(text) for text in free} & set(LABELS)  # unconstrained it babbles
    trie = LabelTrie(tiny_tokenizer, LABELS, "Name the diagnosis.")
    constrained = generate_answers(model, tiny_tokenizer, examples, 2, 4, "labels",
                                   DecodingConfig(strategy=strategy), constraint=trie)
    assert all(extract_answer(text) in LABELS for text in constrained), constrained


def test_the_trie_follows_each_label_to_its_end_of_turn_marker(tiny_tokenizer):
    trie = LabelTrie(tiny_tokenizer, LABELS, None)
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ids in label_completion_ids(tiny_tokenizer, LABELS, None):
        assert end in ids  # the answer ends, as in training, with the end-of-turn marker
        for step in range(len(ids)):
            assert ids[step] in trie.allowed(ids[:step])
    assert trie.allowed([end + 10_000]) == [end]  # off the trie (a finished row): only the stop token


def test_a_reasoning_model_thinks_freely_then_answers_a_label(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = R1_TEMPLATE
    trie = LabelTrie(tokenizer, LABELS, "Name the diagnosis.")
    close = tokenizer.convert_tokens_to_ids("</think>")
    thought = tokenizer("the rash itches", add_special_tokens=False)["input_ids"]
    assert trie.allowed(thought) is None  # still thinking: unconstrained
    after = trie.allowed([*thought, close])
    answer = tokenizer("\n\nFlu", add_special_tokens=False)["input_ids"]
    assert answer[0] in after and trie.allowed([*thought, close, *answer]) is not None


def test_the_answer_budget_fits_the_model_unless_set(tiny_tokenizer):
    reasoning = copy.deepcopy(tiny_tokenizer)
    reasoning.chat_template = R1_TEMPLATE
    assert answer_budget(tiny_tokenizer, None) == 32
    assert answer_budget(reasoning, None) == 1024  # a whole thinking block fits
    assert answer_budget(reasoning, 48) == 48


def test_unfinished_thinking_is_counted_not_silently_scored_as_no_answer(tiny_model_dir, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = R1_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    config = TunelabConfig(data={"source": "x.csv", "input_column": "text", "label_column": "label"},
                           evaluate={"max_new_tokens": 3})  # far too short for a random model to close </think>
    examples = [dict(e, label=e["messages"][-1]["content"]) for e in _examples(4)]
    labels = sorted({e["label"] for e in examples})
    metrics, _ = score_model(model, tokenizer, examples, labels, config, "tuned", label_constraint(config, tokenizer,
                                                                                                     labels))
    assert metrics["truncated_thinking_rate"] == 1.0 and metrics["accuracy"] == 0.0
    plain, _ = score_model(model, tiny_tokenizer, examples, labels, config, "tuned")
    assert "truncated_thinking_rate" not in plain

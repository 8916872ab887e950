"""Answers restricted to the label set, through transformers' own generate, on a random tiny model."""

import copy

import pytest
from transformers import AutoModelForCausalLM

from conftest import make_label_rows
from test_chat import R1_TEMPLATE
from tunelab.config import DecodingConfig
from tunelab.evaluate.constrain import LabelTrie, label_completion_ids
from tunelab.evaluate.runner import generate_answers
from tunelab.evaluate.scoring import extract_answer

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

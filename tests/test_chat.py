"""Chat rendering with the model's own template, answer-only masking, and answer extraction."""

import copy
from collections import Counter

import pytest

from conftest import make_label_rows, write_config, write_csv
from tunelab.config import ModelConfig, load_config
from tunelab.data.chat import IGNORE_INDEX, encode_example, render_prompt, strip_thinking
from tunelab.data.prepare import build_splits
from tunelab.errors import TunelabError
from tunelab.evaluate.scoring import extract_answer, label_metrics, match_label, match_label_prefix, token_f1
from tunelab.model.load import load_tokenizer
from tunelab.model.source import materialize

EXAMPLE = {
    "id": "0",
    "messages": [
        {"role": "system", "content": "Name the diagnosis."},
        {"role": "user", "content": "My skin is red, itchy and covered in silver scales."},
        {"role": "assistant", "content": "Psoriasis"},
    ],
    "label": "Psoriasis",
}

# DeepSeek-R1-Distill's template shape: the generation prompt opens a <think> block, while an
# assistant turn in the conversation is rendered without one.
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and chat template, from the packaged GGUF."""
    config = ModelConfig(name_or_path="smollm2-135m-instruct")
    return load_tokenizer(materialize(config), config)


def check_answer_only_labels(tokenizer, expected_completion: str):
    encoded = encode_example(tokenizer, EXAMPLE, max_length=512)
    prompt_ids = tokenizer(render_prompt(tokenizer, EXAMPLE["messages"][:-1]), add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids
    assert encoded.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    answer_ids = encoded.labels[len(prompt_ids):]
    assert IGNORE_INDEX not in answer_ids and answer_ids == encoded.input_ids[len(prompt_ids):]
    assert tokenizer.decode(answer_ids) == expected_completion
    return encoded


def test_smollm2_template_masks_everything_but_the_answer(smollm2_tokenizer):
    check_answer_only_labels(smollm2_tokenizer, "Psoriasis<|im_end|>\n")
    prompt = render_prompt(smollm2_tokenizer, EXAMPLE["messages"][:-1])
    assert prompt.endswith("<|im_start|>assistant\n") and "Name the diagnosis." in prompt
    assert "SmolLM" not in prompt  # our system prompt replaces the template's default one


def test_tiny_qwen_template_masks_everything_but_the_answer(tiny_tokenizer):
    check_answer_only_labels(tiny_tokenizer, "Psoriasis<|im_end|>\n")


def test_reasoning_template_gets_a_closed_empty_think_block(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = R1_TEMPLATE
    assert render_prompt(tokenizer, EXAMPLE["messages"][:-1]).endswith("<｜Assistant｜><think>\n")
    check_answer_only_labels(tokenizer, "\n</think>\n\nPsoriasis<｜end▁of▁sentence｜>")


def _with(user: str | None = None, answer: str | None = None) -> dict:
    example = copy.deepcopy(EXAMPLE)
    if user is not None:
        example["messages"][1]["content"] = user
    if answer is not None:
        example["messages"][2]["content"] = answer
    return example


def test_overlong_prompt_loses_the_start_of_the_user_text_only(tiny_tokenizer):
    encoded = encode_example(tiny_tokenizer, _with(user="itchy skin " * 200 + "and silver scales"), max_length=64)
    assert encoded.prompt_cut > 0 and encoded.answer_cut == 0 and len(encoded.input_ids) == 64
    text = tiny_tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nName the diagnosis.<|im_end|>\n<|im_start|>user\n")
    assert "silver scales<|im_end|>\n<|im_start|>assistant\nPsoriasis<|im_end|>\n" in text
    answer = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(answer) == "Psoriasis<|im_end|>\n"


def test_overlong_answer_keeps_its_end_of_turn(tiny_tokenizer):
    long_answer = "Psoriasis, " + "a chronic skin condition " * 40
    encoded = encode_example(tiny_tokenizer, _with(answer=long_answer), max_length=64)
    assert encoded.answer_cut > 0 and len(encoded.input_ids) == 64
    answer = tiny_tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert answer.startswith("Psoriasis, a chronic") and answer.endswith("<|im_end|>\n")
    assert "Name the diagnosis." in tiny_tokenizer.decode(encoded.input_ids)


def test_a_max_length_shorter_than_the_template_is_one_clear_error(tiny_tokenizer):
    with pytest.raises(TunelabError, match="train.max_length=8 is shorter than the chat template"):
        encode_example(tiny_tokenizer, _with(user="itchy " * 50), max_length=8)


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        ("<think>Red scales suggest psoriasis.</think>\n\nPsoriasis", "Psoriasis"),
        ("  <think>\nLet me think about the rash and", ""),  # unterminated: no answer yet
        ("The rash is scaly.\n</think>\n\nPsoriasis", "Psoriasis"),  # prompt already opened <think>
        ("Psoriasis", "Psoriasis"),
    ],
)
def test_strip_thinking(generated, answer):
    assert strip_thinking(generated) == answer


def test_extract_answer_takes_the_first_line_after_thinking():
    assert extract_answer("<think>hmm</think>\n\nMigraine\nIt is common.") == "Migraine"


@pytest.mark.parametrize(("answer", "strict", "prefix"), [
    ("psoriasis.", "Psoriasis", "Psoriasis"),
    ("  COMMON   cold ", "Common Cold", "Common Cold"),
    ("Cold sore", "Cold sore", "Cold sore"),  # a label that starts with another label is itself
    ("Cold", "Cold", "Cold"),
    ("Common cold, most likely", None, "Common Cold"),  # hedged
    ("Psoriasis or eczema", None, "Psoriasis"),  # compound
    ("Psoriasis-like rash", None, "Psoriasis"),
    ("Psoriasisx", None, None),
    ("I am not sure", None, None),
])
def test_strict_label_match_needs_the_whole_answer_the_prefix_rule_is_lenient(answer, strict, prefix):
    labels = ["Cold", "Cold sore", "Common Cold", "Psoriasis"]
    assert match_label(answer, labels) == strict
    assert match_label_prefix(answer, labels) == prefix


def test_label_metrics_count_hedged_and_unknown_answers_as_wrong_and_report_the_prefix_rule_beside():
    metrics = label_metrics(["A", "A", "B", "B"], ["a.", "A or B", "B", "I do not know"], ["A", "B"])
    assert metrics["accuracy"] == 0.5
    assert metrics["prefix_accuracy"] == 0.75
    assert metrics["unknown_label_rate"] == 0.5
    assert metrics["per_class_recall"] == {"A": 0.5, "B": 0.5}


def test_labels_equal_after_normalisation_are_an_error_naming_both(tmp_path, tiny_model_dir):
    rows = make_label_rows() + [{"text": "I sneeze all day long.", "label": "flu."}]
    config = load_config(write_config(tmp_path, {"source": str(write_csv(tmp_path / "d.csv", rows))}, tiny_model_dir))
    with pytest.raises(TunelabError, match="labels 'Flu' and 'flu.' are the same answer"):
        build_splits(config)


def test_token_f1():
    assert token_f1("red itchy rash", "itchy red rash") == 1.0
    assert token_f1("red rash", "itchy red rash") == pytest.approx(0.8)
    assert token_f1("", "rash") == 0.0


def test_evaluation_subset_is_stratified_not_the_first_rows_and_names_labels_left_out(caplog):
    from tunelab.data.split import stratified_subset

    rows = [{"id": str(i), "label": label} for label in ("A", "B", "C") for i in range(20)]  # sorted by label

    def draw(limit, seed):
        return stratified_subset(rows, limit, seed, "evaluate.max_examples")

    subset = draw(15, 0)
    assert Counter(e["label"] for e in subset) == {"A": 5, "B": 5, "C": 5}
    assert subset == draw(15, 0) != draw(15, 1)
    with caplog.at_level("WARNING"):
        assert len(draw(2, 0)) == 2
    assert "1 label is not in the scored subset" in caplog.text


def test_per_label_numbers_cover_only_the_labels_scored():
    metrics = label_metrics(["A", "A"], ["A", "B"], ["A", "B", "C"])
    assert metrics["per_class_recall"] == {"A": 0.5}
    assert metrics["macro_f1"] == pytest.approx(2 / 3)  # label A only: precision 1, recall 0.5

"""Bad input a user gives: one line naming the file, row or key, exit code 2, nothing half-written."""

import os

import pytest
from typer.testing import CliRunner

from conftest import make_label_rows, write_config, write_csv
from tunelab.cli import app

ROWS = make_label_rows(per_label=6)


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, expected: str, run_dir):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0], lines[0]
    assert not run_dir.exists(), "a failed command must not leave a run directory"


def csv_file(tmp_path, rows=ROWS, name="data.csv"):
    return str(write_csv(tmp_path / name, rows))


def raw_file(tmp_path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


# Each case: (what the user gave, how to build the config's data/sections, the expected message).
CASES = {
    "missing data file": (lambda t: {"data": {"source": "missing.csv"}}, "data file not found: missing.csv"),
    "missing column": (lambda t: {"data": {"source": csv_file(t), "label_column": "diagnosis"}},
                       "no column 'diagnosis' (columns: text, label)"),
    "empty dataset": (lambda t: {"data": {"source": raw_file(t, "empty.csv", b"text,label\n")}},
                      "empty.csv: the dataset is empty"),
    "blank label": (lambda t: {"data": {"source": csv_file(t, ROWS[:2] + [{"text": "I cough.", "label": " "}])}},
                    "data.csv: row 3: 'label' is empty"),
    "empty text column": (lambda t: {"data": {"source": csv_file(t, [{"text": " ", "label": "Flu"}] * 3)}},
                          "every row: 'text' is empty (3 rows)"),
    "undecodable bytes": (lambda t: {"data": {"source": raw_file(
        t, "latin.csv", b"text,label\nfine,Flu\ncaf\xe9,Flu\n")}}, "latin.csv: line 3: bytes that are not UTF-8"),
    "duplicate column names": (lambda t: {"data": {"source": raw_file(t, "dup.csv", b"text,label,text\na,b,c\n")}},
                               "dup.csv: duplicate column name 'text'"),
    "invalid JSONL line": (lambda t: {"data": {"source": raw_file(
        t, "d.jsonl", b'{"text": "a", "label": "b"}\n{oops\n')}}, "d.jsonl: line 2: not valid JSON"),
    "non-string value": (lambda t: {"data": {"source": raw_file(t, "d2.jsonl", b'{"text": ["a"], "label": "b"}\n')}},
                         "d2.jsonl: row 1: 'text' is not text (list)"),
    "unseen test label": (lambda t: {"data": {"source": csv_file(t), "test_file": csv_file(
        t, [{"text": "brand new text", "label": "Gout"}], "test.csv")}},
        "1 test label never appears in training: 'Gout'"),
    "last message not the answer": (lambda t: {"data": {"source": raw_file(
        t, "chat.jsonl", b'{"chat": [{"role": "user", "content": "hi"}]}\n'), "input_column": None,
        "label_column": None, "messages_column": "chat"}}, "row 1: the last message must be the assistant's answer"),
    "every row a duplicate": (lambda t: {"data": {"source": csv_file(t, [{"text": "I cough.", "label": "Flu"}] * 5)}},
                              "only 1 distinct row(s) left after de-duplication"),
    "sample larger than the data": (lambda t: {"data": {"source": csv_file(t)}, "prepare": {"sample": 5000}},
                                    "prepare.sample=5000 is larger than the"),
    "k larger than the rows": (lambda t: {"data": {"source": csv_file(t)}, "prepare": {"k": 500}},
                               "prepare.k=500 is larger than the"),
    "unknown method": (lambda t: {"data": {"source": csv_file(t)}, "train": {"method": "dora"}},
                       "'train.method': Input should be 'full', 'lora' or 'qlora'"),
    "mistyped key": (lambda t: {"data": {"source": csv_file(t)}, "train": {"learning_rte": 1e-4}},
                     "unknown key 'train.learning_rte' (did you mean train.learning_rate? allowed:"),
    "reversed search range": (lambda t: {"data": {"source": csv_file(t)}, "search": {
        "strategy": "tpe", "space": {"train.learning_rate": {"low": 1e-3, "high": 1e-4}}}},
        # found by test_fuzz: Optuna raised its ValueError inside the first trial
        "'search.space.train.learning_rate': low 0.001 is above high 0.0001"),
    "LoRA on no layer": (lambda t: {"data": {"source": csv_file(t)}, "train": {"lora": {"target_modules": ["nope"]}}},
                         # found by test_fuzz: PEFT's NoMatchingPeftModuleError ended in a traceback
                         "train.lora.target_modules: ['nope'] match no layer of Qwen2ForCausalLM; its linear layers: "
                         "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or all-linear)"),
    "LoRA on no layer, in a search": (lambda t: {"data": {"source": csv_file(t)}, "search": {
        "space": {"train.lora.target_modules": [["q_proj"], ["nope", "v_prj"]]}}},
        "train.lora.target_modules: ['nope', 'v_prj'] match no layer of Qwen2ForCausalLM"),
    "value of the wrong type": (lambda t: {"data": {"source": csv_file(t)}, "train": {"epochs": "many"}},
                                "'train.epochs': Input should be a valid number"),
    "a directory that is no model": (lambda t: {"data": {"source": csv_file(t)}, "model": {
        "name_or_path": str(_mkdir(t / "not-a-model"))}}, "not-a-model: not a model directory (no config.json)"),
    "invalid Hub id": (lambda t: {"data": {"source": csv_file(t)}, "model": {"name_or_path": "my model!"}},
                       "model.name_or_path 'my model!': no such local path, and not a valid Hub id"),
    "missing GGUF file": (lambda t: {"data": {"source": csv_file(t)}, "model": {"name_or_path": str(t / "w.gguf")}},
                          "model file not found"),
}


def _mkdir(path):
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_to_train(case, tmp_path, tiny_model_dir):
    build, expected = CASES[case]
    sections = build(tmp_path)
    data = sections.pop("data")
    config = write_config(tmp_path, data, tiny_model_dir, **sections)
    if data.get("messages_column"):  # write_config fills in the column layout of label tasks
        text = config.read_text().replace("input_column: text\n", "").replace("label_column: label\n", "")
        config.write_text(text)
    os.chdir(tmp_path)
    assert_one_line_error(run_cli("train", str(config)), expected, tmp_path / "run")


def test_a_hub_model_that_cannot_be_fetched_fails_before_any_stage(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    config = write_config(tmp_path, {"source": csv_file(tmp_path), "validation_size": 0.2}, tiny_model_dir,
                          model={"name_or_path": "tunelab-tests/no-such-model"},
                          search={"space": {"train.learning_rate": [1e-3]}})
    for command in ("run", "search", "train"):
        done = subprocess.run([sys.executable, "-m", "tunelab", command, str(config)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "model 'tunelab-tests/no-such-model' is not in the local Hugging Face cache" in lines[0]
        assert not (tmp_path / "run").exists()


def test_invalid_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("data: [unclosed")
    assert_one_line_error(run_cli("train", str(tmp_path / "c.yaml")), "c.yaml: not valid YAML", tmp_path / "run")


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "none.yaml")), "config file not found", tmp_path / "run")


def test_override_without_a_value(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, {"source": csv_file(tmp_path)}, tiny_model_dir)
    assert_one_line_error(run_cli("train", str(config), "--set", "train.epochs"), "expected KEY=VALUE",
                          tmp_path / "run")


def test_evaluate_a_folder_that_is_no_run(tmp_path):
    assert_one_line_error(run_cli("evaluate", str(tmp_path)), "not a tunelab run directory", tmp_path / "run")


def test_resume_with_nothing_to_resume(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, {"source": csv_file(tmp_path)}, tiny_model_dir)
    assert_one_line_error(run_cli("train", str(config), "--resume"), "nothing to resume", tmp_path / "run")


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ({"space": {}}, "search.space is empty"),
        ({"space": {"train.learning_rte": [1e-4]}}, "search.space: unknown key 'train.learning_rte'"),
        ({"space": {"train.learning_rate": [1e-4]}}, "search needs a validation split"),
    ],
)
def test_bad_search_settings(tmp_path, tiny_model_dir, search, expected):
    data = {"source": csv_file(tmp_path), "validation_size": 0.2 if "validation" not in expected else 0.0}
    config = write_config(tmp_path, data, tiny_model_dir, search=search)
    assert_one_line_error(run_cli("search", str(config)), expected, tmp_path / "run")


def test_many_bad_rows_are_reported_together_with_a_count(tmp_path, tiny_model_dir):
    rows = [{"text": "", "label": "Flu"} if i % 2 else dict(row) for i, row in enumerate(make_label_rows(per_label=20))]
    rows[0]["label"] = ""
    config = write_config(tmp_path, {"source": csv_file(tmp_path, rows)}, tiny_model_dir)
    result = run_cli("train", str(config))
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert "data.csv: 31 problems; row 1: 'label' is empty" in lines[0]
    assert len(lines) == 21 and lines[-1].strip() == "... and 11 more"
    assert not (tmp_path / "run").exists()

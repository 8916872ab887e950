"""Config errors a user makes: mistyped keys, wrong types, bad overrides."""

import pytest
import yaml

from tunelab.config import TunelabConfig, load_config, save_config
from tunelab.errors import TunelabError

BASE = {"data": {"source": "x.csv", "input_column": "text", "label_column": "label"}}


def write(tmp_path, tree):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_unknown_key_names_it_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"learning_rte": 1e-4}})
    with pytest.raises(TunelabError) as error:
        load_config(path)
    message = str(error.value)
    assert "unknown key 'train.learning_rte'" in message
    assert "learning_rate" in message and "per_device_batch_size" in message


def test_unknown_nested_key_lists_that_sections_keys(tmp_path):
    path = write(tmp_path, {**BASE, "train": {"lora": {"rank": 8}}})
    with pytest.raises(TunelabError, match=r"unknown key 'train.lora.rank' \(allowed: alpha, dropout, r, "):
        load_config(path)


def test_unknown_section(tmp_path):
    with pytest.raises(TunelabError, match="unknown key 'trainer'.*allowed: data, evaluate, model"):
        load_config(write(tmp_path, {**BASE, "trainer": {}}))


def test_wrong_type_and_unknown_method_name_the_key(tmp_path):
    with pytest.raises(TunelabError, match="'train.learning_rate'"):
        load_config(write(tmp_path, {**BASE, "train": {"learning_rate": "fast"}}))
    with pytest.raises(TunelabError, match="'train.method'.*'full', 'lora' or 'qlora'"):
        load_config(write(tmp_path, {**BASE, "train": {"method": "dora"}}))


def test_missing_data_section_is_named(tmp_path):
    with pytest.raises(TunelabError, match="missing required key 'data'"):
        load_config(write(tmp_path, {"train": {}}))


def test_column_layout_must_be_complete(tmp_path):
    tree = {"data": {"source": "x.csv", "input_column": "text"}}
    with pytest.raises(TunelabError, match="exactly one of label_column and completion_column"):
        load_config(write(tmp_path, tree))


def test_set_overrides_parse_yaml_values(tmp_path):
    config = load_config(write(tmp_path, BASE), [
        "train.learning_rate=1e-4", "train.lora.target_modules=[q_proj, v_proj]", "train.method=full",
    ])
    assert config.train.learning_rate == 1e-4
    assert config.train.lora.target_modules == ["q_proj", "v_proj"]
    assert config.train.method == "full"


def test_set_override_is_validated_like_the_file_and_blamed_with_a_suggestion(tmp_path):
    with pytest.raises(TunelabError, match=r"^--set train.learning_rat: unknown key 'train.learning_rat' "
                                           r"\(did you mean train.learning_rate\? allowed: "):
        load_config(write(tmp_path, BASE), ["train.learning_rat=1e-4"])
    with pytest.raises(TunelabError, match=r"c.yaml: unknown key 'train.lora.alhpa' \(did you mean train.lora.alpha\?"):
        load_config(write(tmp_path, {**BASE, "train": {"lora": {"alhpa": 8}}}))
    with pytest.raises(TunelabError, match="expected KEY=VALUE"):
        load_config(write(tmp_path, BASE), ["train.epochs"])


def test_resolved_config_round_trips_with_defaults(tmp_path):
    config = load_config(write(tmp_path, BASE))
    save_config(config, tmp_path / "resolved.yaml")
    saved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert saved["train"]["lora"]["target_modules"] == "all-linear"
    assert saved["model"]["trust_remote_code"] is False
    assert TunelabConfig.model_validate(saved) == config


def test_missing_or_invalid_yaml_file(tmp_path):
    with pytest.raises(TunelabError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(TunelabError, match="not valid YAML"):
        load_config(bad)


def test_label_probabilities_auto_stops_where_they_cost_several_generations():
    from tunelab.config import EvaluateConfig

    assert EvaluateConfig().scores_label_probabilities(24) and not EvaluateConfig().scores_label_probabilities(151)
    assert EvaluateConfig(label_probabilities=True).scores_label_probabilities(151)
    assert not EvaluateConfig(label_probabilities=False).scores_label_probabilities(3)


PASSWORD_URL = "postgresql://tuner:s3cr%40t!@db.internal:5432/optuna"


def test_a_password_in_the_study_or_tracking_url_never_reaches_a_file(tmp_path):
    import optuna

    from tunelab.rundir import RunDir
    from tunelab.search.results import write_results

    config = TunelabConfig.model_validate({**BASE, "search": {"storage": PASSWORD_URL,
                                                              "space": {"train.learning_rate": [1e-3]}},
                                           "train": {"mlflow_tracking_uri": PASSWORD_URL.replace("optuna", "mlflow")}})
    save_config(config, tmp_path / "config.yaml")
    study = optuna.create_study(direction="minimize")
    study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 1e-3}, value=0.5,
                                              distributions={"train.learning_rate": optuna.distributions.
                                                             CategoricalDistribution([1e-3])}))
    study.set_user_attr("metric", "loss")
    study.set_user_attr("intermediate", {"measure": "loss", "sign": 1.0, "units": 1})
    write_results(config, study, RunDir(tmp_path))
    for written in (tmp_path / "config.yaml", tmp_path / "search" / "best.yaml"):
        text = written.read_text()
        assert "s3cr" not in text and "postgresql://tuner:***@db.internal:5432/optuna" in text, written
        assert "postgresql://tuner:***@db.internal:5432/mlflow" in text, written


def test_only_settings_that_change_the_model_retrain_it():
    from tunelab.pipeline import stage_hashes
    from tunelab.search.space import with_values

    config = TunelabConfig.model_validate(BASE)
    hashes = stage_hashes(config)

    def changed(key, value):
        other = stage_hashes(with_values(config, {key: value}))
        return {stage for stage in hashes if other[stage] != hashes[stage]}

    assert changed("evaluate.max_new_tokens", 64) == {"search", "evaluate", "publish"}
    assert changed("search.storage", PASSWORD_URL) == set()
    assert changed("train.report_to", ["tensorboard"]) == set()  # tracking a run does not change it
    assert changed("train.learning_rate", 0.01) == {"search", "train", "evaluate", "publish"}
    assert changed("publish.private", False) == {"publish"}


@pytest.mark.parametrize("name", ["symptoms-cpu", "symptoms-qwen-distill", "intents-clinc150"])
def test_every_example_config_is_valid_and_its_search_space_checks(name):
    from pathlib import Path

    from tunelab.pipeline import check_search_settings

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / f"{name}.yaml")
    if config.search.space:
        check_search_settings(config)

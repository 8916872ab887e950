"""`tunelab publish` against a local Hub-API server with the real huggingface_hub client.

The push goes through create_repo/upload_folder (preupload, LFS batch and upload, commit), the
verification through snapshot_download; the test downloads the repo once more on its own, loads it
and compares answers with the local model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub_server import serve

TOKEN = "hf_tunelabTestSecret0123456789abcdef"
TUNELAB = [sys.executable, "-m", "tunelab"]
BASE_ID = ["--set", "model.hub_id=alice/tiny-base"]  # the tests' base is a local directory


@pytest.fixture
def hub():
    server, state = serve({TOKEN: "alice"})
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()


def publish(run_dir: Path, endpoint: str, token: str, home: Path, *extra: str, verbose: bool = False):
    """The CLI in a subprocess; `verbose` adds every library log line (HTTP requests included)."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}
    flags = ["-v"] if verbose else []
    return subprocess.run([*TUNELAB, *flags, "publish", str(run_dir), *extra], capture_output=True, text=True,
                          timeout=300, env=env)


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def upload_base(endpoint: str, model_dir: Path, monkeypatch) -> None:
    """The base on the test Hub as alice/tiny-base, so a downloaded adapter finds it by its Hub id."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=endpoint, token=TOKEN)
    api.create_repo("alice/tiny-base")
    api.upload_folder(folder_path=str(model_dir), repo_id="alice/tiny-base")


def test_push_retries_a_503_then_verifies_and_never_leaks_the_token(trained_run, hub, tmp_path, monkeypatch,
                                                                    tiny_model_dir):
    endpoint, state = hub
    upload_base(endpoint, tiny_model_dir, monkeypatch)
    state.fail_next["commit"] = [503]
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny-symptoms", *BASE_ID,
                   verbose=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"pushed to {endpoint}/alice/tiny-symptoms" in done.stderr
    assert "verified: downloaded" in done.stderr and "test prompts answered as in eval/predictions.jsonl" in done.stderr
    assert "failed (HTTP 503), retrying" in done.stderr
    assert [status for _, name, status in state.requests if name == "commit"] == [200, 503, 200]  # base, then ours

    repo = state.repos["alice/tiny-symptoms"]
    assert repo.private and len(repo.commits) == 1
    published = trained_run / "publish"
    assert repo.files == {str(p.relative_to(published)): p.read_bytes() for p in files_under(published)}
    assert {"adapter_model.safetensors"} <= repo.lfs and not any(
        name.endswith((".bin", ".pt", ".pth")) for name in repo.files)

    logs = done.stdout + done.stderr
    written = [p.read_bytes() for p in files_under(trained_run) + files_under(tmp_path / "hf-home")]
    assert TOKEN not in logs
    assert not [content for content in [*repo.files.values(), *written] if TOKEN.encode() in content]

    # Download once more, independently of tunelab's own check, and compare answers.
    from huggingface_hub import snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config import config_from_run_dir
    from tunelab.evaluate.generation import generate_answers
    from tunelab.model.adapters import load_tuned
    from tunelab.rundir import RunDir, read_jsonl

    downloaded = snapshot_download("alice/tiny-symptoms", endpoint=endpoint, token=TOKEN,
                                   local_dir=tmp_path / "download", cache_dir=tmp_path / "cache")
    adapter = json.loads((Path(downloaded) / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "alice/tiny-base"
    base = AutoModelForCausalLM.from_pretrained(snapshot_download(
        "alice/tiny-base", endpoint=endpoint, token=TOKEN, cache_dir=tmp_path / "cache"))
    model = PeftModel.from_pretrained(base, downloaded).eval()
    tokenizer = AutoTokenizer.from_pretrained(downloaded)
    config = config_from_run_dir(trained_run, [])
    local, local_tokenizer, _ = load_tuned(config, RunDir(trained_run))
    prompts = read_jsonl(RunDir(trained_run).split("test"))[:4]
    assert generate_answers(model, tokenizer, prompts, 8, 4, "hub") == generate_answers(
        local.eval(), local_tokenizer, prompts, 8, 4, "local")


def test_merged_weights_push_and_load_without_peft(trained_run, hub, tmp_path):
    endpoint, state = hub
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny-merged", "--merged",
                   "--no-private")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verified: downloaded" in done.stderr
    repo = state.repos["alice/tiny-merged"]
    assert not repo.private and "model.safetensors" in repo.lfs
    assert not any(name.startswith("adapter_") for name in repo.files)


def test_a_wrong_token_is_one_line_and_uploads_nothing(trained_run, hub, tmp_path):
    endpoint, state = hub
    done = publish(trained_run, endpoint, "hf_wrong", tmp_path / "hf-home", "--repo-id", "alice/tiny-symptoms",
                   *BASE_ID)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: the Hub refused the token for alice/tiny-symptoms (HTTP 401): set HF_TOKEN to a token with write "
        "access, or run `hf auth login`"]
    assert [name for _, name, _ in state.requests] == ["whoami"] and not state.repos


def test_verification_catches_a_file_that_comes_back_different(trained_run, hub, tmp_path):
    endpoint, state = hub
    adapter_config = (trained_run / "model" / "adapter_config.json").read_bytes()
    state.served_instead["adapter_config.json"] = adapter_config.replace(b'"r": 8', b'"r": 9')
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny", *BASE_ID)
    assert done.returncode == 2
    assert "verify alice/tiny: downloaded files differ from publish/: adapter_config.json" in done.stderr


def test_verification_compares_with_the_answers_the_evaluation_recorded(trained_run, hub, tmp_path):
    """The check is against what the evaluation scored, not against the folder just uploaded: a model
    that answers one test prompt otherwise than eval/predictions.jsonl fails the push."""
    import shutil

    endpoint, state = hub
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "eval" / "predictions.jsonl"
    predictions = [json.loads(line) for line in path.read_text().splitlines()]
    labels = sorted({row["gold"] for row in predictions})
    predictions[1]["tuned_answer"] = next(label for label in labels if label != predictions[1]["tuned_answer"])
    path.write_text("".join(json.dumps(row) + "\n" for row in predictions))
    done = publish(run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/stale", *BASE_ID)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"verify alice/stale: test prompt 2 answered {predictions_answer(trained_run, 1)!r} after download, " \
           f"{predictions[1]['tuned_answer']!r} in eval/predictions.jsonl" in done.stderr


def predictions_answer(run: Path, index: int) -> str:
    lines = (run / "eval" / "predictions.jsonl").read_text().splitlines()
    return json.loads(lines[index])["tuned_answer"]


def test_an_adapter_of_a_local_base_needs_the_base_hub_id(trained_run, hub, tmp_path):
    endpoint, state = hub
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "set model.hub_id, or publish merged weights (--merged)" in done.stderr
    assert not state.requests


def test_a_private_push_into_an_existing_public_repo_is_refused(trained_run, hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    endpoint, state = hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    HfApi(endpoint=endpoint, token=TOKEN).create_repo("alice/open", private=False)
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/open", *BASE_ID)
    assert done.returncode == 2 and "alice/open already exists and is public" in done.stderr
    assert not state.repos["alice/open"].commits
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/open", *BASE_ID,
                   "--allow-public", "--no-verify")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(state.repos["alice/open"].commits) == 1 and not state.repos["alice/open"].private


def test_a_repo_of_another_owner_is_refused(trained_run, hub, tmp_path):
    endpoint, state = hub
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "bob/tiny", *BASE_ID)
    assert done.returncode == 2 and "refused the token for bob/tiny (HTTP 403)" in done.stderr
    assert not state.repos


def test_the_card_parses_back_with_the_metrics_of_metrics_json(trained_run):
    from huggingface_hub import ModelCard

    done = subprocess.run([*TUNELAB, "publish", str(trained_run), "--dry-run"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    card = ModelCard.load(trained_run / "publish" / "README.md")
    tuned = json.loads((trained_run / "eval" / "metrics.json").read_text())["tuned"]
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert reported == {name: round(tuned[name], 4) for name in ("accuracy", "macro_f1", "loss")}
    assert card.data.base_model is None and card.data.library_name == "peft"  # a local base has no Hub id
    index = yaml.safe_load(card.content.split("---")[1])["model-index"]
    assert index[0]["results"][0]["dataset"]["split"] == "test"
    # The card speaks of this task: the configured disclaimer, a test row as the example prompt, the
    # dataset by name, and what the train loss is.
    assert "**Not a medical device and not medical advice.**" in card.text
    first_test = json.loads((trained_run / "data" / "test.jsonl").read_text().splitlines()[0])
    assert repr(first_test["messages"][-2]["content"]) in card.text and "pypi" not in card.text
    assert index[0]["results"][0]["dataset"]["name"] == "symptoms"
    assert "train loss last logged" in card.text and "mean over the run" in card.text
    # A local base is named by its folder, never by this machine's path.
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    local_path = config["model"]["name_or_path"]
    adapter = json.loads((trained_run / "publish" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == Path(local_path).name
    assert local_path not in card.text and "cache_dir" not in card.text

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

from conftest import make_label_rows, write_config, write_csv
from hub_server import serve

TOKEN = "hf_tunelabTestSecret0123456789abcdef"
TUNELAB = [sys.executable, "-m", "tunelab"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("publish")
    csv = write_csv(folder / "symptoms.csv", make_label_rows(per_label=8))
    config = write_config(folder, {"source": str(csv)}, tiny_model_dir, train={"max_steps": 4},
                          publish={"verify_prompts": 2})
    done = subprocess.run([*TUNELAB, "train", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run"


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


def test_push_retries_a_503_then_verifies_and_never_leaks_the_token(trained_run, hub, tmp_path, monkeypatch):
    endpoint, state = hub
    state.fail_next["commit"] = [503]
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny-symptoms",
                   verbose=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"pushed to {endpoint}/alice/tiny-symptoms" in done.stderr
    assert "verified: downloaded" in done.stderr and "2 test prompts answered as locally" in done.stderr
    assert "failed (HTTP 503), retrying" in done.stderr
    assert [status for _, name, status in state.requests if name == "commit"] == [503, 200]

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
    from huggingface_hub import constants, snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.config import config_from_run_dir
    from tunelab.evaluate.generation import generate_answers
    from tunelab.model.adapters import load_tuned
    from tunelab.rundir import RunDir, read_jsonl

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    downloaded = snapshot_download("alice/tiny-symptoms", endpoint=endpoint, token=TOKEN,
                                   local_dir=tmp_path / "download", cache_dir=tmp_path / "cache")
    adapter = json.loads((Path(downloaded) / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
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
    done = publish(trained_run, endpoint, "hf_wrong", tmp_path / "hf-home", "--repo-id", "alice/tiny-symptoms")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: the Hub refused the token for alice/tiny-symptoms (HTTP 401): set HF_TOKEN to a token with write "
        "access, or run `hf auth login`"]
    assert [name for _, name, _ in state.requests] == ["whoami"] and not state.repos


def test_verification_catches_a_file_that_comes_back_different(trained_run, hub, tmp_path):
    endpoint, state = hub
    adapter_config = (trained_run / "model" / "adapter_config.json").read_bytes()
    state.served_instead["adapter_config.json"] = adapter_config.replace(b'"r": 8', b'"r": 9')
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "alice/tiny")
    assert done.returncode == 2
    assert "verify alice/tiny: downloaded files differ from publish/: adapter_config.json" in done.stderr


def test_a_repo_of_another_owner_is_refused(trained_run, hub, tmp_path):
    endpoint, state = hub
    done = publish(trained_run, endpoint, TOKEN, tmp_path / "hf-home", "--repo-id", "bob/tiny")
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
    assert card.data.base_model and card.data.library_name == "peft"
    index = yaml.safe_load(card.content.split("---")[1])["model-index"]
    assert index[0]["results"][0]["dataset"]["split"] == "test"
    assert "not a medical device" in card.text.lower() or "not medical advice" in card.text.lower()

"""Container export for managed platforms (Vertex AI custom containers, any Docker host): a build context.

The context holds a served copy of the run (config, tokenizer, labels, the GGUF file; no training
data, no adapter, no secrets), tunelab's own source to install, a Dockerfile that serves the copy
with `tunelab serve` on llama.cpp, and a README with the `docker` and `gcloud ai` commands and the
routes to register. Docker is not available here: the folder is built and its served copy is
checked by running the server from it (tests do so under Vertex AI's AIP_* variables).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import tunelab
from tunelab.config import TunelabConfig, save_config
from tunelab.data.labels import LABELS_FILE, known_labels
from tunelab.errors import TunelabError
from tunelab.export.gguf import exported_file, place
from tunelab.model.files import TOKENIZER_FILES, copy_present
from tunelab.rundir import RunDir, staged_directory, write_json, write_text_atomic

log = logging.getLogger(__name__)

PORT = 8080  # Vertex AI sends AIP_HTTP_PORT=8080; the same port for a plain `docker run`
LLAMA_CPP_PYTHON = "0.3.36"


def _tunelab_source(folder: Path) -> None:
    """tunelab's package and its pyproject.toml (pinned dependencies) from the installed checkout."""
    package = Path(tunelab.__file__).resolve().parent
    project = package.parents[1] / "pyproject.toml"
    if not project.is_file():
        raise TunelabError(f"the container export copies tunelab's source, but {project} is missing "
                           "(install tunelab from its repository: pip install -e .)")
    shutil.copytree(package, folder / "src" / "tunelab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(project, folder / "pyproject.toml")
    (folder / "README.md").write_text("tunelab, copied into this build context by `tunelab export -f container`.\n")


def _served_copy(config: TunelabConfig, run_dir: RunDir, gguf: Path, quant: str, record: dict[str, Any],
                 folder: Path) -> None:
    served = RunDir(folder)
    save_config(config.model_copy(update={"serve": config.serve.model_copy(update={
        "host": "0.0.0.0", "port": PORT, "engine": "llama.cpp", "gguf": quant})}), served.config)
    served.model.mkdir(parents=True)
    copy_present(TOKENIZER_FILES, run_dir.model, served.model)
    if config.data.label_column:
        write_json(folder / LABELS_FILE, known_labels(run_dir, []))
    destination = served.export("gguf")
    destination.mkdir(parents=True)
    place(gguf, destination / gguf.name)
    write_json(destination / "export.json", {**record, "files": {quant: record["files"][quant]}})


def export_container(config: TunelabConfig, run_dir: RunDir, quant: str) -> dict[str, Any]:
    gguf, record = exported_file(config, run_dir, quant)
    name = run_dir.root.name.lower()
    destination = run_dir.export("container")
    with staged_directory(destination) as folder:
        _tunelab_source(folder / "tunelab")
        _served_copy(config, run_dir, gguf, quant, record, folder / "run")
        write_text_atomic(folder / "Dockerfile", DOCKERFILE.format(llama=LLAMA_CPP_PYTHON, port=PORT))
        write_text_atomic(folder / ".dockerignore", "**/__pycache__\n")
        write_text_atomic(folder / "README.md", README.format(name=name, port=PORT))
        result = {"format": "container", "gguf": gguf.name, "engine": "llama.cpp", "port": PORT,
                  "routes": {"health": "/health", "predict": "/predict", "openai": "/v1/chat/completions"},
                  "verified": None, "note": "Docker is not available here: the build context was written; its "
                                            "served copy runs with `tunelab serve run/` (tested)"}
        write_json(folder / "export.json", result)
    log.info("container export: %s (docker build -t %s %s)", destination, name, destination)
    return result | {"folder": str(destination)}


DOCKERFILE = """\
# tunelab serve on llama.cpp: OpenAI chat completions, /health, and Vertex AI's predict route.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \\
    && rm -rf /var/lib/apt/lists/*
# CPU torch first (tunelab's pinned version, from PyTorch's CPU index), then tunelab with its pins,
# then llama.cpp's Python binding built for a portable CPU.
COPY tunelab/pyproject.toml /opt/tunelab/pyproject.toml
RUN pip install --no-cache-dir torch==$(grep -o '"torch==[^"]*"' /opt/tunelab/pyproject.toml | cut -d= -f3 \\
    | tr -d '"') --index-url https://download.pytorch.org/whl/cpu
COPY tunelab/ /opt/tunelab/
RUN pip install --no-cache-dir /opt/tunelab \\
    && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir llama-cpp-python=={llama}
COPY run/ /srv/run/
ENV HF_HUB_OFFLINE=1 AIP_HTTP_PORT={port}
EXPOSE {port}
CMD ["tunelab", "serve", "/srv/run"]
"""

README = """\
# {name}: a serving container

The run's GGUF model served by `tunelab serve` on llama.cpp (CPU): OpenAI-compatible
`POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, and Vertex AI's
`POST /predict` (`{{"instances": [{{"messages": [...]}}]}}` or `{{"prompt": "..."}}` instances).
It listens on `AIP_HTTP_PORT` ({port}); `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE` move the routes.

```bash
docker build -t {name} .
docker run --rm -p {port}:{port} {name}
curl localhost:{port}/v1/chat/completions -H 'content-type: application/json' \\
  -d '{{"model": "run", "messages": [{{"role": "user", "content": "..."}}]}}'
```

## Vertex AI

```bash
IMAGE=REGION-docker.pkg.dev/PROJECT/REPOSITORY/{name}:1
docker tag {name} $IMAGE && docker push $IMAGE
gcloud ai models upload --region=REGION --display-name={name} --container-image-uri=$IMAGE \\
  --container-ports={port} --container-health-route=/health --container-predict-route=/predict
gcloud ai endpoints create --region=REGION --display-name={name}
gcloud ai endpoints deploy-model ENDPOINT_ID --region=REGION --model=MODEL_ID \\
  --display-name={name} --machine-type=n1-standard-4
```

Routes to register: health `/health`, predict `/predict`, port {port}. The image holds no training
data and no credentials: `run/` is the run's config, tokenizer, labels and GGUF file.
"""

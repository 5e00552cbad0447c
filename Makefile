# Two entry points, each self-contained on a fresh machine (Python 3.10+, git, make).
#   make demo   generate a project from examples/conv-vae.yaml and run that project's tests
#   make test   run scaffold's test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SPEC ?= examples/conv-vae.yaml
DEMO_DIR ?= build/demo

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare range would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(VENV)/bin/scaffold new $(DEMO_DIR)/$(basename $(notdir $(DEMO_SPEC))) --spec $(DEMO_SPEC)
	cd $(DEMO_DIR)/$(basename $(notdir $(DEMO_SPEC))) && $(abspath $(PY)) -m pytest -q

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/new_vs_copier.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/validate_scaling.py

clean:
	rm -rf $(VENV) build

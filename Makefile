# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test install install-dev install-plan gpu-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files make installs happen once, and again whenever a requirements file changes. Which files this machine
# gets (the GPU wheels only where nvidia-smi lists a GPU; STUDIO_DEVICE=cpu forces the CPU plan) is decided by
# core/installplan.py: `make install-plan` prints it without installing anything.
$(VENV)/.train-installed: $(VENV)/bin/python requirements.txt requirements-train.txt requirements-gpu.txt core/installplan.py
	@$(PYTHON) -m core.installplan train
	$(PY) -m pip install --quiet $$($(PYTHON) -m core.installplan train --pip-args)
	touch $@

$(VENV)/.dev-installed: $(VENV)/.train-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install-plan:
	@$(PYTHON) -m core.installplan train
	@echo "make test also installs: requirements-dev.txt"

install: $(VENV)/.train-installed
install-dev: $(VENV)/.dev-installed

run: $(VENV)/.train-installed
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest

# One prepared check for a GPU machine (doctor, a throughput table, a fine-tune on the sample), written to
# gpu-check/gpu-check.md. It uses .venv when there is one, else the system Python: the GPU machine has JAX and no
# TensorFlow (core/gpucheck.py says what it needs). GPU_CHECK_ARGS=--quick runs tiny sizes (a check of the check).
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m core.gpucheck $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

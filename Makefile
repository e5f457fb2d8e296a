# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test install install-dev install-plan gpu-check clean FORCE

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files make installs happen once, and again whenever a requirements file or the plan changes. Which files
# this machine gets (the GPU wheels only where nvidia-smi lists a GPU; STUDIO_DEVICE=cpu forces the CPU plan;
# STUDIO_JAX_CUDA=1 adds JAX's CUDA wheels) is decided by core/installplan.py: `make install-plan` prints it
# without installing anything. The CUDA wheels are pinned by constraints-gpu.txt.
PLAN = $(PYTHON) -m core.installplan --venv $(VENV)

# The plan make would install now, asked on every make (FORCE) but rewritten only when it differs from the last
# one, so the install below re-runs exactly when the plan changed (a GPU now listed, STUDIO_DEVICE or
# STUDIO_JAX_CUDA set) and a `make run` with nothing changed installs nothing. `+` runs it under `make -n` too,
# so a dry run says truly whether the install would run.
$(VENV)/install-plan.wanted: FORCE | $(VENV)/bin/python
	+@$(PLAN) train --stamp
FORCE:

# After pip succeeds, --record writes $(VENV)/install-plan.json (files, reason, GPUs, Python, time): `python -m core
# doctor` compares it with the plan now and says what to run.
$(VENV)/.train-installed: $(VENV)/bin/python $(VENV)/install-plan.wanted requirements.txt requirements-train.txt \
		requirements-gpu.txt requirements-jax-cuda.txt constraints-gpu.txt core/installplan.py
	@$(PLAN) train
	$(PY) -m pip install --quiet $$($(PLAN) train --pip-args)
	@$(PLAN) train --record
	touch $@

$(VENV)/.dev-installed: $(VENV)/.train-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@$(PLAN) dev --record
	touch $@

install-plan:
	@$(PLAN) train
	@echo "make test also installs: requirements-dev.txt"

install: $(VENV)/.train-installed
install-dev: $(VENV)/.dev-installed

run: $(VENV)/.train-installed
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest

# One prepared check for a GPU machine (doctor, one fine-tune, a throughput table), written to gpu-check/gpu-check.md:
# by default on what `make run` installs (TensorFlow, with the pinned CUDA wheels where nvidia-smi lists a GPU; run
# `make install` first). GPU_CHECK_ARGS=--quick runs tiny sizes (a check of the check, in CI); GPU_CHECK_ARGS=
# "--backend jax" measures JAX. It uses .venv when there is one, else the system Python: a machine with JAX and no
# package registry runs it that way (docs/benchmarks.md, the GPU check). It installs nothing itself, so the check
# never changes the environment it measures.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) -m core.gpucheck $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

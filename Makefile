# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files make installs happen once, and again whenever a requirements file changes.
$(VENV)/.train-installed: $(VENV)/bin/python requirements.txt requirements-train.txt
	$(PY) -m pip install --quiet -r requirements-train.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.train-installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.train-installed
install-dev: $(VENV)/.dev-installed

run: $(VENV)/.train-installed
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

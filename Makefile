# Two commands from a fresh clone (Python >= 3.10 with venv):
#   make demo   set up .venv, then run the whole pipeline on the embedded synthetic default (python launch.py)
#   make test   set up .venv, then run the whole test suite
#   make lint   ruff check + ruff format --check (configured in pyproject.toml)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean-venv

setup: $(VENV)/.installed

# Reinstall when the pinned requirements or the package metadata change.
$(VENV)/.installed: requirements-dev.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) launch.py

test: setup
	$(PY) -m pytest -ra

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)

# The front door: `make lab` brings up a working lab homeserver, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAYOUT ?= single

.PHONY: venv lab lab-up lab-down deploy-lab test bench lint format lock docs

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lab-up: venv ## boot the lab hosts (no deploy)
	$(BIN)/python -m matrix_deploy.lab up --layout $(LAYOUT)

lab-down: venv ## stop the lab and undo every change it made to this machine
	$(BIN)/python -m matrix_deploy.lab down

lab: lab-up deploy-lab ## lab-up, then the real deploy into it

deploy-lab: venv
	$(BIN)/python -m matrix_deploy.lab.release
	$(BIN)/python -m matrix_deploy.lab deploy  # each homeserver of the lab (two with LAYOUT=pair)
	$(BIN)/python -m matrix_deploy.lab welcome

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m tests.support.parallel  # the unit tests beside two groups of lab modules, each with a lab of its own

bench: venv ## deploy timings against the floor on lab hosts; prints one table (several minutes)
	$(BIN)/python bench/bench.py

lock: venv ## lock a Synapse version's virtualenv (hashes) into locks/: make lock SYNAPSE=1.164.0
	$(BIN)/pip install -q uv
	$(BIN)/python -m matrix_deploy.services.synapse.locks $(SYNAPSE)

docs: venv ## the README's settings table, made from matrix_deploy/options.py
	$(BIN)/python -m matrix_deploy.operator.options --readme

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

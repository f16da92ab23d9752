# emsbms: `make demo` and `make test` each set up their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo cloud-demo test lint bench schema clean vm-prepare

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,cloud]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emsbms demo

# the cloud on loopback: PostgreSQL, Mosquitto, the service and a simulated edge (docs/cli.md#emsbms-cloud-demo)
cloud-demo: $(STAMP)
	$(BIN)/emsbms cloud demo

test: $(STAMP)
	$(BIN)/ruff check emsbms tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# the SocketCAN test tier's VM (root: apt-get); without it `make test` skips the tier
vm-prepare:
	bash tools/vm/prepare.sh

bench: $(STAMP)
	$(BIN)/python -m emsbms.bench

schema: $(STAMP)
	$(BIN)/python -m emsbms.profile.schema > docs/profile.schema.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PACKAGES := brokers streams operators agents
# where `make run` keeps its log, so a second run resumes where the first stopped
DATA   ?= data

.PHONY: run test check lint typecheck imports docs pytest bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	mkdir -p $(DATA)
	$(BIN)/python -m brokers.demo --url sqlite:///$(DATA)/demo.db

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests

imports: $(STAMP)
	$(BIN)/lint-imports

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet --site-dir .site

check: lint typecheck imports docs

pytest: $(STAMP)
	NEUROPLEX_REQUIRE_BACKENDS=$${NEUROPLEX_REQUIRE_BACKENDS:-1} $(BIN)/pytest

test: check pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .site .bench .mypy_cache .ruff_cache

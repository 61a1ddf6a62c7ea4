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

# the main job: page views counted per user (table) and per 10 s window, on the embedded log;
# DURATION bounds the run, and a second run resumes the totals from $(DATA)/neuroplex.db
DURATION ?= 15
run: $(STAMP)
	mkdir -p $(DATA)
	$(BIN)/python -m streams.examples.pageviews --broker sqlite:///$(CURDIR)/$(DATA)/neuroplex.db --duration $(DURATION)

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

# two worker processes (pytest-xdist), each with its own brokers; WORKERS=0 runs in this one;
# local brokers' output is kept in $(BROKER_LOGS) for reading after a failed run
WORKERS ?= 2
BROKER_LOGS ?= .pytest-brokers
pytest: $(STAMP)
	rm -rf $(BROKER_LOGS)
	NEUROPLEX_REQUIRE_BACKENDS=$${NEUROPLEX_REQUIRE_BACKENDS:-1} \
	NEUROPLEX_BROKER_LOGS=$${NEUROPLEX_BROKER_LOGS:-$(CURDIR)/$(BROKER_LOGS)} \
	$(BIN)/pytest -n $(WORKERS) --dist worksteal

test: check pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .site .bench .mypy_cache .ruff_cache $(BROKER_LOGS)

# ecom-ml: the two commands are `make demo` and `make test`; everything else is a step of theirs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
BIN := .venv/bin
PYTEST_ARGS ?=
# Two xdist workers (tests/conftest.py groups each module on one worker); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

.PHONY: help venv browser setup demo test airflow stop bench constraints clean

help:
	@echo "make demo   - set up everything and run the pipeline end to end on generated orders"
	@echo "make test   - set up everything and run the tests"
	@echo "make airflow - start the local Airflow (web UI, scheduler, dag-processor, triggerer)"
	@echo "make stop   - stop everything the project started"
	@echo "make bench  - run the benchmarks in bench/"

venv:
	@scripts/ensure-venv

# Debian's Chromium for the browser test of the web UI (tests/test_ui_browser.py).
browser:
	@scripts/ensure-browser

setup: venv
	@$(BIN)/ecom-ml setup

demo: setup
	@$(BIN)/python -m ecom_ml.demo

test: setup browser
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

airflow: setup
	@$(BIN)/ecom-ml ui start

stop:
	@if [ -x $(BIN)/ecom-ml ]; then $(BIN)/ecom-ml ui stop; $(BIN)/ecom-ml mlflow stop; $(BIN)/ecom-ml db stop; \
	else echo "nothing to stop (no .venv)"; fi

bench: setup
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

# Regenerate constraints.txt from a fresh resolution of requirements.txt (needs network to PyPI).
constraints:
	@rm -rf .ecom/constraints-venv && python3.11 -m venv .ecom/constraints-venv
	@.ecom/constraints-venv/bin/pip install --quiet -r requirements.txt
	@{ echo "# Full transitive pin set for requirements.txt on CPython 3.11; regenerate with \`make constraints\`."; \
	   .ecom/constraints-venv/bin/pip freeze; } > constraints.txt
	@rm -rf .ecom/constraints-venv

clean: stop
	rm -rf .venv .ecom lake

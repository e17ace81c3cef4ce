# Two entry points: `make demo` and `make test`. Each creates .venv and installs the pinned
# dependencies (constraints.txt) plus this package, editable, once; later runs skip the install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean mutation

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,export]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raysegment demo $(if $(DATA),--data $(DATA),) $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Mutation testing of the production modules against their fast unit tests ([tool.mutmut] in pyproject.toml):
# prints the score per module and the surviving mutants; fails under 85 % (docs/testing.md).
# 8 min on 2 idle cores (4313 mutants, measured 2026-12-01; 20+ min while other jobs share them).
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run
	$(BIN)/python tests/mutation_report.py

lint: $(STAMP)
	$(BIN)/ruff check raysegment jobs bench tests

clean:
	rm -rf $(VENV) .pytest_cache mutants

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the newest releases pyproject.toml allows (no constraints file), for `make test-latest`
LATEST := .venv-latest
LATEST_STAMP := $(LATEST)/.installed

.PHONY: run test test-slow test-latest test-wheel lint bench device-check clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=70.1'
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python run.py run --config configs/quickstart.py

# Two pytest workers (pytest-xdist; `make test WORKERS=4` on a bigger machine), one test file
# at a time each: a file's module-scoped compiled fixtures are built once, by its worker. Tests
# marked `alone` (processes joined by jax.distributed, whose shutdown barrier timed out beside
# the other worker's load) run afterwards by themselves.
WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --durations=25 -m 'not slow and not alone'
	$(BIN)/python -m pytest -q -m 'alone and not slow'

# The tests marked slow (CI runs them after `make test`), on the same workers; a slow test
# also marked `alone` would run afterwards by itself (none is: exit 5, no tests, is fine there).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --durations=25 -m 'slow and not alone'
	$(BIN)/python -m pytest -q -m 'slow and alone' || [ $$? -eq 5 ]

$(LATEST_STAMP): pyproject.toml setup.py
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip 'setuptools>=70.1'
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	touch $(LATEST_STAMP)

# Fast tests of the spaces, searchers, store, pruners, Study API and the install checks against
# the newest allowed releases (a subset keeps CI inside its time; `make test-latest TESTS=tests`
# runs all of them).
TESTS ?= tests/test_spaces.py tests/test_searchers.py tests/test_store.py \
  tests/test_multifidelity.py tests/test_study.py tests/test_install.py
test-latest: $(LATEST_STAMP)
	$(LATEST)/bin/pip list 2>/dev/null | grep -E '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint) '
	$(LATEST)/bin/python -m pytest -q $(TESTS)

# Builds the wheel and runs the quickstart, report, repair, NAS table and the Colab notebook
# from a fresh virtual environment outside the repository.
test-wheel:
	PY=$(PY) bash tests/install/wheel.sh

device-check: $(STAMP)
	$(BIN)/python benchmarks/device_check.py

bench: $(STAMP)
	$(BIN)/python benchmarks/population_vs_sequential.py

clean:
	rm -rf $(VENV) $(LATEST) runs

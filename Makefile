# wtool: `make demo` and `make test` work on a fresh machine with only Python, pip and gcc.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install compile demo test test-fast lint bench bench-2g samples clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Byte-compile wtool once: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every start
# would otherwise recompile ~13k lines, a third of `wtool inspect`'s time.
compile: $(STAMP)
	@$(PY) -m compileall -q wtool

install: $(STAMP)

demo: compile
	@bash scripts/demo.sh $(VENV)/bin/wtool

test: compile
	$(PY) -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not tf and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check wtool tests bench scripts
	$(VENV)/bin/mypy

bench: compile
	$(PY) bench/run.py

# The weights-in-and-out rows at the size their targets are set for (~2 GB models; ~12 GB of disk, ~25 min).
bench-2g: compile
	WTOOL_BENCH_IO_MB=2048 $(PY) bench/run.py weights_io

samples: $(STAMP)
	$(PY) scripts/make_samples.py sample_models

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

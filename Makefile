# wtool: `make demo` and `make test` work on a fresh machine with only Python, pip and gcc.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# keras-hub for the tests of graph commands on presets (tests/test_preset.py; they skip without it). Its
# tensorflow-text dependency is left out (--no-deps): nothing wtool runs needs it, and it is 200 MB pinned
# to one TensorFlow minor. These pins are the pure packages `import keras_hub` needs (kagglehub and
# huggingface_hub are optional to it and only download). keras-hub needs Python 3.11+ and keras>=3.15.
HUB_PINS := keras-hub==0.32.0 regex==2026.11.19 tokenizers==0.23.3 sentencepiece==0.2.3
HUB_STAMP := $(VENV)/.hub-installed-0.32.0

.PHONY: install compile demo test test-fast lint bench bench-2g samples clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(HUB_STAMP): $(STAMP)
	@if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		$(PY) -m pip install --quiet --no-deps $(HUB_PINS); \
	else echo "keras-hub needs Python 3.11+: the preset graph tests will skip"; fi
	touch $(HUB_STAMP)

# Byte-compile wtool once: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every start
# would otherwise recompile ~13k lines, a third of `wtool inspect`'s time.
compile: $(STAMP) $(HUB_STAMP)
	@$(PY) -m compileall -q wtool

install: $(STAMP) $(HUB_STAMP)

demo: compile
	@bash scripts/demo.sh $(VENV)/bin/wtool

test: compile
	$(PY) -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP) $(HUB_STAMP)
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

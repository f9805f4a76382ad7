# bocpy developer entry points.  Everything goes through a virtual
# environment made from the Python >= 3.12 that scripts/ensure-python.sh
# finds (or builds), so a fresh machine needs nothing but this repository.
#
#   make demo    run the parallel demo (speedup over all cores, checked)
#   make test    every test: the C runtime (plain, TSan, ASan+UBSan, seed
#                sweep), lint, the Python suite against an ASan+UBSan build
#                of the extension, and the Python suite
#   make bench   the core benchmark (figures quoted in README.md)

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
C_SOURCES := $(wildcard libboc/include/*.h libboc/src/*.[ch] libboc/tests/*.[ch] binding/*.[ch])

.PHONY: all venv build demo test test-c test-python test-python-asan soak stress lint format bench clean

all: build

$(VENV)/.ready: scripts/ensure-python.sh pyproject.toml
	@base="$$(bash scripts/ensure-python.sh --quiet)" && \
	  echo "using $$base" && \
	  "$$base" -m venv --clear $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check setuptools wheel pytest hypothesis ruff mypy clang-format==18.1.8 'pyglet>=2.1'
	@touch $@

venv: $(VENV)/.ready

build: $(VENV)/.ready
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e .

demo: build
	$(PY) -m bocpy.examples.parallel_demo

test-c:
	$(MAKE) -C libboc check

lint: $(VENV)/.ready
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy --strict src/bocpy
	$(VENV)/bin/clang-format --dry-run --Werror $(C_SOURCES)

format: $(VENV)/.ready
	$(VENV)/bin/clang-format -i $(C_SOURCES)
	$(PY) -m ruff format src tests benchmarks

test-python: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-python-asan: build
	tests/sanitizers/run-python-asan.sh -p no:cacheprovider $(PYTEST_ARGS)

# One minute of mixed work with invariants and an RSS check, as start/wait
# cycles: RSS must stay flat across runtimes (docs/reliability.md).
soak: build
	$(PY) benchmarks/soak.py --minutes 1 --mode wait

# The threaded lifecycle stress test (tests/test_stress.py), longer than the
# few seconds it gets in the suite, under the plain build and under ASan.
STRESS_SECONDS ?= 20
STRESS_RUNS ?= 3
stress: build
	BOCPY_STRESS_SECONDS=$(STRESS_SECONDS) BOCPY_STRESS_RUNS=$(STRESS_RUNS) \
	  $(PY) -m pytest tests/test_stress.py -q -s -p no:cacheprovider
	BOCPY_STRESS_SECONDS=$(STRESS_SECONDS) BOCPY_STRESS_RUNS=$(STRESS_RUNS) \
	  BOCPY_ASAN_TESTS=tests/test_stress.py tests/sanitizers/run-python-asan.sh -q -s -p no:cacheprovider

# The Python suite runs last so that its summary line closes the output.
test: test-c lint test-python-asan soak stress test-python

bench: build
	$(PY) benchmarks/bench_core.py

clean:
	$(MAKE) -C libboc clean
	rm -rf build src/*.egg-info src/bocpy/*.so $(VENV)

# Every target creates/updates the local virtual environment itself, so on a fresh machine with
# only python3 `make demo` and `make test` do all the set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep the suite inside 2 CPU cores; XLA's own thread pool would otherwise oversubscribe them.
export XLA_PYTHON_CLIENT_PREALLOCATE := false
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: venv test test-fast demo demo-quick figures bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch (tests only) comes from the local CPU wheel; install it first so nothing pulls CUDA.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow"

demo: $(STAMP)
	$(PY) -m decomp.demo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

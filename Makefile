# The two commands: `make run` (main job, embedded default) and `make test` (the test suite).
# Both create .venv and install the project on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= platform,test

.PHONY: run test setup data browser clean bench

run: setup
	$(VENV)/bin/groupdiff run --out outputs

test: setup browser
	$(PY) -m pytest -q --durations=25

setup: $(STAMP) data

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Built-in data: the Debian package dataset-fashion-mnist.
data:
	@bash infra/ensure-fmnist.sh

# The browser the UI test drives (Debian package chromium; without one that test skips).
browser:
	@bash infra/ensure-chromium.sh

bench: setup
	$(PY) -m pip install -q -c requirements.lock -e ".[bench]"
	for b in attention train sample mining data load; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

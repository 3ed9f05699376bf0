# The two set-up commands of the README are `make demo` and `make test`; each
# creates the virtualenv first when it is missing (or its pins changed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench stage clean

venv: $(STAMP)

# Every requirements file dev.txt installs, directly or through -r.
$(STAMP): requirements/dev.txt requirements/runner-onnx.txt requirements/runner-base.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m tools.demo

bench: $(STAMP)
	$(PY) -m tools.bench

stage: $(STAMP)
	$(PY) -m tools.stage gdrive-runner --all
	$(PY) -m tools.stage registry-sync

clean:
	rm -rf build .demo .pytest_cache

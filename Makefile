# The two set-up commands of the README are `make demo` and `make test`; each
# creates the virtualenv first when it is missing (or its pins changed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench stage clean deploy deploy-gpu undeploy

venv: $(STAMP)

# Every requirements file dev.txt installs, directly or through -r; then the pack itself
# (editable, no dependencies) for the `cvat-registry` command in .venv/bin.
$(STAMP): requirements/dev.txt requirements/runner-onnx.txt requirements/runner-base.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"Python 3.11 is required (found %d.%d): make PYTHON=python3.11 ..." % sys.version_info[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
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

# Deploy onto CVAT's Nuclio (docs/admin-guide.md); settings in deploy/settings.env.
# Extra options: make deploy DEPLOY_FLAGS="--platform kube" (or --dry-run).
DEPLOY_FLAGS ?=

deploy: $(STAMP)
	deploy/deploy.sh $(DEPLOY_FLAGS)

deploy-gpu: $(STAMP)
	deploy/deploy.sh --gpu $(DEPLOY_FLAGS)

undeploy: $(STAMP)
	deploy/remove.sh $(DEPLOY_FLAGS)

clean:
	rm -rf build .demo .bench .pytest_cache

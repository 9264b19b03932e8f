# Two targets do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
# Both install the exact, hashed set of packages in uv.lock into .venv (docs/INSTALL.md): a release
# published elsewhere cannot change it. `make lock` refreshes uv.lock to the newest releases inside
# pyproject.toml's ranges; an install fails when uv.lock is out of date with pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# uv itself, pinned by hash in uv-requirements.txt, lives in its own small venv so that syncing .venv
# never removes it.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION ?= 0.13.9
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run test lint lock lock-uv clean

install: $(STAMP)

$(UV): uv-requirements.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r uv-requirements.txt
	touch $(UV)

# --locked: stop with an error, installing nothing, when uv.lock does not match pyproject.toml.
$(STAMP): $(UV) uv.lock pyproject.toml
	$(UV) sync --locked --extra dev --python $(PYTHON)
	$(UV) pip check --python $(BIN)/python
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bytelab compare

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

lock-uv: $(UV)
	echo "uv==$(UV_VERSION)" | $(UV) pip compile - --generate-hashes --no-header --python-version 3.11 \
		-o uv-requirements.txt
	sed -i '1i # The uv that `make` uses to install uv.lock, pinned with its hashes (refresh: make lock-uv UV_VERSION=...).' uv-requirements.txt

clean:
	rm -rf $(VENV) $(TOOLS) runs .pytest_cache

# `make demo` and `make test` are the README's two commands; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt requirements-runtime.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

.PHONY: setup demo test espeak
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fqse demo

# The data generator's tests need espeak-ng (Debian package; installs offline from the mirror in seconds).
espeak:
	@command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }

test: setup espeak
	$(PY) -m pytest tests -q

# Two commands matter: `make demo` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo bench lint typecheck unit servers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . --group dev --group bench
	touch $(STAMP)

servers:
	./scripts/ensure-servers.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check redisbreaker tests benchmarks examples
	$(VENV)/bin/ruff format --check redisbreaker tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Everything: lint, types, and the whole suite against real servers it starts itself.
test: $(STAMP) servers lint typecheck
	$(PY) -m pytest -q

# Quick unit tests only (fakeredis and pure logic).
unit: $(STAMP)
	$(PY) -m pytest -q -m "not cluster and not celery and not rabbitmq" tests/unit

# The examples in examples/, each on REDISBREAKER_URL or a private redis-server.
demo: $(STAMP) servers
	$(PY) examples/shared_breaker.py
	$(PY) examples/broken_worker.py
	$(PY) examples/transactions.py

# The comparison suite: installs the pinned comparison libraries, then runs every case.
bench: $(STAMP) servers
	$(PY) -m pip install -q --group bench
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist

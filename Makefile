# lt_punch: two commands on a fresh machine, `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-lab test test-unit lint bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

# Debian packages the NAT lab needs (nftables, coturn, ...). Installed only
# when running as root and only when missing; otherwise lab tests skip.
system-deps:
	@bash scripts/system-deps.sh

# The WebTorrent browser bundle for the browser tests, from the npm registry (no CDN):
# the package's tarball only (its dist/ is self-contained), skipped without npm.
WEBTORRENT := 2.8.5
WEBTORRENT_JS := .cache/webtorrent-$(WEBTORRENT)/webtorrent.min.js
$(WEBTORRENT_JS):
	@bash scripts/webtorrent-bundle.sh $(WEBTORRENT) $(dir $@)

demo: $(STAMP)
	$(VENV)/bin/lt-punch demo

demo-lab: $(STAMP) system-deps
	$(VENV)/bin/lt-punch demo --lab

test: $(STAMP) system-deps $(WEBTORRENT_JS)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check lt_punch tests examples benchmarks
	$(VENV)/bin/mypy lt_punch

bench: $(STAMP) system-deps
	$(PY) benchmarks/punch_connect.py
	$(PY) benchmarks/nat_discovery.py
	$(PY) benchmarks/pair_matrix.py
	$(PY) benchmarks/stream_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .cache

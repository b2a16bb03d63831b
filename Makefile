# The README's two commands are `make demo` and `make test`; both run `make setup` first.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo demo-basic test lint typecheck unit integration bench clean ha-loop

setup:
	./scripts/bootstrap

demo: setup
	$(PY) examples/shop/run.py

demo-basic: setup
	$(PY) examples/demo/run.py

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: setup
	$(VENV)/bin/mypy src tests benchmarks
	$(VENV)/bin/mypy examples/demo  # each example is a project of its own
	$(VENV)/bin/mypy examples/shop

test: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy src tests benchmarks
	$(VENV)/bin/mypy examples/demo  # each example is a project of its own
	$(VENV)/bin/mypy examples/shop
	$(VENV)/bin/pytest -q

unit: setup
	$(VENV)/bin/pytest -q tests/unit

integration: setup
	$(VENV)/bin/pytest -q tests/integration

bench: setup
	$(PY) -m benchmarks

# 20 failovers in a row (SIGKILL of the leader's node) of the demo on Patroni in strict
# synchronous mode, under read/write load: every acknowledged write must be found
# (docs/reliability.md, "Primary failover"). About 15 minutes; the services' logs are
# kept in .djscale/ha-loop-logs.
HA_LOOP := examples/demo/ha-sync.toml
HA_STATE := .djscale/ha-loop
ha-loop: setup
	djscale cluster up -t $(HA_LOOP) --state-dir $(HA_STATE) --only postgres,redis,migrate,app,lb
	djscale chaos kill-primary-node -t $(HA_LOOP) --state-dir $(HA_STATE) --repeat 20 \
		--write-path /visit --count-sql "SELECT count(*) FROM demo_visit"; \
		rc=$$?; rm -rf $(HA_STATE)-logs; cp -r $(HA_STATE)/logs $(HA_STATE)-logs; \
		djscale cluster down -t $(HA_LOOP) --state-dir $(HA_STATE) --purge; exit $$rc

clean:
	rm -rf .djscale .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build dist

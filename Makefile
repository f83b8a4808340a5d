# The two commands of the README: `make run` and `make test`.
.PHONY: run test setup setup-test lint unit bench soak clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@infra/bootstrap.sh run

setup-test:
	@infra/bootstrap.sh test

run: setup
	$(VENV)/bin/iotbridge up

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy functions infra/iotbridge_local device/pi/iotbridge_pi

test: setup-test lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-test
	$(PY) -m benchmarks $(BENCH_ARGS)

soak: setup-test
	IOTBRIDGE_SOAK=1 $(PY) -m pytest tests/faults tests/fuzz $(PYTEST_ARGS)

clean:
	rm -rf .venv .venv-sam .aws-sam build .pytest_cache .mypy_cache .ruff_cache bench-results

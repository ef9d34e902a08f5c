# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first
# (virtualenv, torch, the project, the Kafka broker jars) and skip what is already there.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_VERSION := 2.13.0
KAFKA_LIB := infra/kafka/lib
PYTEST_ARGS ?=

.PHONY: demo test test-faults setup kafka-jars lint bench clean distclean help

help:
	@echo "make demo   - set up and run the end-to-end demo on embedded Kafka, Ray and mlflow"
	@echo "make test   - set up and run the test suite (real Kafka broker, Ray and mlflow store)"
	@echo "make test-faults - the fault-injection checks (broker kills, outages, a 3-broker cluster)"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmark scripts under tests/benchmarks (peers in their own venv)"

demo: setup
	$(BIN)/recsys demo

test: setup
	$(BIN)/python -m pytest -m "not faults" $(PYTEST_ARGS)

# Minutes of broker kills, outages and a three-broker cluster: kept out of `make test`, run by CI.
test-faults: setup
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

setup: $(VENV)/.stamp-install $(KAFKA_LIB)/.stamp

# torch is installed on its own, first and pinned, so that nothing else pulls a second build.
$(VENV)/.stamp-install: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

kafka-jars: $(KAFKA_LIB)/.stamp

$(KAFKA_LIB)/.stamp: infra/kafka/pom.xml
	@command -v java >/dev/null || { echo "Java 17+ is required to run the Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to resolve the Kafka broker jars"; exit 1; }
	rm -rf $(KAFKA_LIB)
	mvn -q -f infra/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib
	touch $@

lint: setup
	$(BIN)/ruff check .

PEERS := tests/benchmarks/.peers-venv/.stamp-peers

# Vowpal Wabbit, MABWiser and Open Bandit Pipeline, measured beside recsys, live in their own venv
# (never our deps); the idempotent setup script reruns whenever it changes.
$(PEERS): tests/benchmarks/setup_peers.sh
	bash tests/benchmarks/setup_peers.sh $(PYTHON)
	touch $@

# Every bench_*.py runs even when an earlier one fails (a parity failure must not hide the other
# tables); the target fails at the end if any did. BENCH_ARGS (e.g. --quick) goes to every script.
BENCH_ARGS ?=
bench: setup $(PEERS)
	@failed=""; for script in tests/benchmarks/bench_*.py; do echo "== $$script"; \
		$(BIN)/python $$script $(BENCH_ARGS) || failed="$$failed $$script"; done; \
		if [ -n "$$failed" ]; then echo "bench failed:$$failed"; exit 1; fi

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis tests/benchmarks/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(KAFKA_LIB) .recsys

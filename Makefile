# Every target sets up what it needs: a virtualenv (the active one, else .venv) with the
# package installed in editable mode and the extras the target uses.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
PORT ?= 8787
# The suite's processes (pytest-xdist): half its tests wait on sockets, sleeps and child
# processes, the rest fuzz on a core; two share a 2-core machine well (1: one process).
TEST_PROCESSES ?= 2
AIOHTTP_CLIENT_TESTS = tests/test_golden_core.py tests/test_errors.py tests/test_gateway.py \
	tests/test_lifecycle.py tests/test_openai_sdk.py tests/test_bedrock.py tests/test_faults.py

.PHONY: run test lint bench bench-micro loadtest clean redis-server-present

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	@touch $@

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

run: $(VENV)/.installed-base
	$(BIN)/streamproxy serve --port $(PORT)

test: $(VENV)/.installed-test redis-server-present
	$(BIN)/ruff check streamproxy tests bench loadtests
	$(BIN)/python -m pytest -q -p no:cacheprovider --benchmark-disable \
		$(if $(filter-out 1,$(TEST_PROCESSES)),-n $(TEST_PROCESSES) --dist worksteal)
	@# The tests that serve requests (STREAMPROXY_RERUN: conftest.py) once more on the
	@# alternative upstream client (aiohttp's), and at the same time on aiohttp's server front
	@# for chat requests (the lean front is the default): they mostly wait on sockets, so the
	@# two runs share the machine's cores well. The first's output follows the second's.
	STREAMPROXY_RERUN=1 STREAMPROXY_UPSTREAM_CLIENT=aiohttp $(BIN)/python -m pytest -q \
		-p no:cacheprovider --benchmark-disable $(AIOHTTP_CLIENT_TESTS) > .rerun-client.log 2>&1 & \
	client=$$!; \
	STREAMPROXY_RERUN=1 STREAMPROXY_FRONT=aiohttp $(BIN)/python -m pytest -q -p no:cacheprovider \
		--benchmark-disable $(AIOHTTP_CLIENT_TESTS) tests/test_auth.py tests/test_cache.py; \
	front=$$?; wait $$client; client=$$?; \
	echo "--- on aiohttp's upstream client:"; cat .rerun-client.log; rm -f .rerun-client.log; \
	test $$front -eq 0 && test $$client -eq 0

# The Redis cache tests start their own redis-server (tests/redis_server.py) and the egress
# proxy tests make a certificate with openssl: install them when missing (apt-get, as root),
# else stop with what to do. A missing one fails the tests, never skips them.
redis-server-present:
	@missing=""; for tool in redis-server openssl; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (the tests need them)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "make test needs$$missing on PATH (the Redis cache tests start their own" \
	         "redis-server; the egress tests make a certificate with openssl): install them," \
	         "e.g. 'sudo apt-get install -y$$missing', or run make test as root on a" \
	         "Debian/Ubuntu machine" >&2; \
	    exit 1; \
	  fi; \
	fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check streamproxy tests bench loadtests

# The streaming benchmark (about 4 to 5 minutes; BENCH_ARGS=--quick: about one).
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench $(BENCH_ARGS)

# The decoder/translator micro-benchmarks, timed (make test runs them once, untimed).
bench-micro: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_bench_micro.py --benchmark-only \
	  --benchmark-columns=min,median,ops --benchmark-sort=name

# A bounded (30 s) headless locust run against the proxy on its embedded default.
loadtest: $(VENV)/.installed-load
	$(BIN)/python loadtests/run.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache .ruff_cache .hypothesis

# Each Keras backend runs in its own process (KERAS_BACKEND is read at import).
PYTHON ?= python3
# Each suite runs on PYTEST_WORKERS processes (pytest-xdist), a test file
# per worker (--dist loadfile: a module's fixtures are built once);
# PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2
PYTEST_FLAGS = -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile \
	$(PYTEST_ARGS)
PYTEST = $(PYTHON) -m pytest $(PYTEST_FLAGS)
# More pytest arguments for every suite, e.g. make test PYTEST_ARGS=--durations=40
PYTEST_ARGS ?=
# Each stage of make test prints its time ("== stage lint: 12 s").
TIMED = bash .ci/timed

# make test-quick: the tests of the modules most changes touch (the wrapper,
# the masks, the estimator, the callback) on TensorFlow, without their
# slowest tests (real-data parity, keras.applications models, the branch
# theorems on CIFAR-10). make test runs everything on every backend.
QUICK_FILES = tests/test_sgs_wrapper.py tests/test_masks.py \
	tests/test_mutual_info.py tests/test_mi_scaling_callback.py
QUICK_SKIP = keras_applications or theorem or real_cifar10_images \
	or real_activations or swap_ema_weights_with_a_multi_optimizer

.PHONY: test test-quick lint docs release-check \
	test-tensorflow test-jax test-torch coverage benchmarks

test: lint docs release-check test-tensorflow test-jax test-torch

test-quick:
	KERAS_BACKEND=tensorflow $(PYTEST) $(QUICK_FILES) -k "not ($(QUICK_SKIP))"

# The settings are in pyproject.toml ([tool.ruff]).
lint:
	$(TIMED) lint $(PYTHON) -m ruff check .
	$(TIMED) format $(PYTHON) -m ruff format --check .

# The API reference from the docstrings (build/api/); fails on any warning.
docs:
	KERAS_BACKEND=jax $(TIMED) docs $(PYTHON) docs/build_api.py

# sdist and wheel, twine check, the wheel alone with JAX in a fresh venv.
release-check:
	$(TIMED) release-check $(PYTHON) release/check.py

test-tensorflow:
	KERAS_BACKEND=tensorflow $(TIMED) tensorflow $(PYTEST)

test-jax:
	KERAS_BACKEND=jax $(TIMED) jax $(PYTEST)

test-torch:
	KERAS_BACKEND=torch $(TIMED) torch $(PYTEST)

# Line and branch coverage of keras_sgs/ and examples/, summed over the three
# backends, subprocesses included (settings: [tool.coverage.run] in
# pyproject.toml). Runs every backend's suite under coverage, so it takes
# longer than make test; the table lands in build/coverage/summary.md.
coverage: export COVERAGE_ROOT = $(CURDIR)
coverage:
	rm -rf build/coverage && mkdir -p build/coverage
	status=0; for backend in tensorflow jax torch; do \
		KERAS_BACKEND=$$backend $(TIMED) coverage-$$backend \
			$(PYTHON) -m coverage run -m pytest $(PYTEST_FLAGS) \
			|| status=1; \
	done; \
	$(PYTHON) -m coverage combine -q && \
	$(PYTHON) -m coverage json -q -o build/coverage/coverage.json && \
	$(PYTHON) .ci/coverage_summary.py build/coverage/coverage.json \
		| tee build/coverage/summary.md; \
	exit $$status

benchmarks:
	KERAS_BACKEND=tensorflow $(PYTHON) benchmarks/step_overhead.py
	KERAS_BACKEND=tensorflow $(PYTHON) benchmarks/mi_refresh.py

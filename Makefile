# Each Keras backend runs in its own process (KERAS_BACKEND is read at import).
PYTHON ?= python3
PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider

.PHONY: test lint test-tensorflow test-jax test-torch benchmarks

test: lint test-tensorflow test-jax test-torch

# The settings are in pyproject.toml ([tool.ruff]).
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test-tensorflow:
	KERAS_BACKEND=tensorflow $(PYTEST)

test-jax:
	KERAS_BACKEND=jax $(PYTEST)

test-torch:
	KERAS_BACKEND=torch $(PYTEST)

benchmarks:
	KERAS_BACKEND=tensorflow $(PYTHON) benchmarks/step_overhead.py
	KERAS_BACKEND=tensorflow $(PYTHON) benchmarks/mi_refresh.py

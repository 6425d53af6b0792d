"""A pytest plugin that runs Keras's own optimizer tests with every Keras
optimizer they construct wrapped in `SGSWrapper` (all-ones masks).

`test_keras_optimizer_suite.py` loads it into a pytest subprocess over the
installed Keras's test files (`-p keras_suite_plugin`). The environment
says what to do:

- `KERAS_SGS_SUITE_MODE`: `"gradient"` or `"update"`, the wrapper's mode.
- `KERAS_SGS_SUITE_REPORT`: path of the JSON report written at the end,
  `{nodeid: {"outcome": ..., "message": ..., "wrappers": ...}}`, where
  `wrappers` counts the SGSWrappers the test built.

How optimizers are wrapped: each Keras optimizer class (`SGD`, `Adam`, ...)
is replaced by a stand-in whose call returns `SGSWrapper(cls(...),
mode=mode)` (and for which `isinstance` and class attributes are the real
class's),

- as an attribute of `keras.optimizers` and `keras.src.optimizers`, before
  the test modules are imported (some build their parameters from
  `optimizers.SGD` at import time), and `keras.optimizers.get` wraps what
  it constructs (so `compile(optimizer="sgd")` is wrapped too);
- as a name imported into each test module
  (`from keras.src.optimizers.adam import Adam`), after collection.

`LossScaleOptimizer` and `MultiOptimizer` are not wrapped (an SGSWrapper
goes inside them: they receive wrapped optimizers), nor the base
`Optimizer` that tests subclass. Keras's internals and its serialization
registry keep the real classes, so `SGSWrapper.from_config` rebuilds the
plain inner optimizer.

Skipped: the tests in `EXPECTED_DIFFERENCES`, and in update mode the tests
that build an optimizer with `use_ema` or `gradient_accumulation_steps`,
which that mode refuses by design.
"""

import fnmatch
import json
import os
import warnings

if os.environ.get("KERAS_BACKEND") == "torch":
    import torch  # noqa: F401  (before TensorFlow: TF then torch segfaults)

import keras
import pytest
from keras.src import optimizers as src_optimizers

import keras_sgs

MODE = os.environ.get("KERAS_SGS_SUITE_MODE")
REPORT = os.environ.get("KERAS_SGS_SUITE_REPORT")

# Keras tests that check what a wrapper is not (the concrete class, its
# private attributes), by node id pattern (`fnmatch`, relative to
# `keras/src`). Each failure was read and understood; everything else must
# pass. The reason is what the test does that a wrapper cannot match.
_PRIVATE_CLIP = (
    "calls `optimizer._clip_gradients()`, private to the concrete optimizer; "
    "the inner optimizer clips inside its own `apply`"
)
EXPECTED_DIFFERENCES = {
    "optimizers/*_test.py::*::test_clip_norm": _PRIVATE_CLIP,
    "optimizers/*_test.py::*::test_clip_value": _PRIVATE_CLIP,
    "optimizers/optimizer_test.py::*::test_global_clip_norm": _PRIVATE_CLIP,
    "optimizers/optimizer_test.py::*::test_get_method": (
        "asserts `isinstance(optimizers.get('sgd'), SGD)`: the class"
    ),
    "optimizers/optimizer_test.py::*::test_gradient_accumulation": (
        "reads `_accumulated_gradients` and `_iterations`, private state of "
        "the inner optimizer"
    ),
    "optimizers/optimizer_test.py::*::"
    "test_overwrite_with_gradient_with_gradient_accumulation": (
        "reads `_accumulated_gradients` and `_iterations`, private state of "
        "the inner optimizer"
    ),
    "optimizers/multi_optimizer_test.py::*::test_serialization": (
        "asserts the sub-optimizers' `__class__.__name__` ('Adam', 'SGD')"
    ),
    "optimizers/nadam_test.py::*::test_build_with_empty_var_list": (
        "reads `_u_product`, private state of the inner Nadam"
    ),
    "optimizers/muon_test.py::*::test_should_use_adamw": (
        "calls `_should_use_adamw()`, private to Muon"
    ),
    "optimizers/muon_test.py::*::test_*_weight_decay": (
        "calls `_apply_weight_decay()`, private to the concrete optimizer "
        "(Muon's own rule); the inner optimizer decays inside its `apply`"
    ),
    "optimizers/muon_test.py::*::test_Newton_Schulz": (
        "calls `zeropower_via_newtonschulz5()`, a helper of the Muon class, "
        "not of the optimizer interface"
    ),
    "optimizers/muon_test.py::*::test_lr_adjust_*": (
        "calls `lr_adjust()`, a helper of the Muon class, not of the "
        "optimizer interface"
    ),
    "optimizers/optimizer_sparse_test.py::*::test_sparse_gradients_*": (
        "mocks `assign` and `_apply_weight_decay` on the optimizer object it "
        "built to watch the update, which the inner optimizer makes; the "
        "sparse results are checked by test_sparse_correctness_*"
    ),
}

UPDATE_MODE_REFUSES = (
    "SGSWrapper(mode='update') refuses inner optimizers with use_ema or "
    "gradient_accumulation_steps by design (ValueError, tested in "
    "test_sgs_wrapper.py); the gradient-mode run covers this test"
)

_NOT_WRAPPED = (
    keras.optimizers.Optimizer,
    keras.optimizers.LossScaleOptimizer,
    keras.optimizers.MultiOptimizer,
)
_PATCHED_MODULES = (keras.optimizers, src_optimizers)


def _optimizer_classes():
    """Every concrete Keras optimizer class these modules export."""
    classes = set()
    for module in _PATCHED_MODULES:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, keras.optimizers.Optimizer)
                and value not in _NOT_WRAPPED
            ):
                classes.add(value)
    return classes


OPTIMIZER_CLASSES = _optimizer_classes()


def wrap(optimizer):
    """`SGSWrapper(optimizer, mode=MODE)`, or a skip where update mode
    refuses the optimizer by design. Counts the wrappers of each test."""
    if MODE == "update" and (
        optimizer.use_ema or optimizer.gradient_accumulation_steps
    ):
        pytest.skip(UPDATE_MODE_REFUSES)
    with warnings.catch_warnings():
        # "a constant gradient mask (nearly) cancels": true, and the masks
        # here are all ones.
        warnings.filterwarnings("ignore", "SGSWrapper", UserWarning)
        wrapper = keras_sgs.SGSWrapper(optimizer, mode=MODE)
    WRAPPED[_current_test] = WRAPPED.get(_current_test, 0) + 1
    return wrapper


class _StandIn(type):
    """The type of the stand-ins for the optimizer classes: calling one
    builds the wrapped optimizer; `isinstance`, `issubclass` and class
    attributes (`SGD.from_config`) are the real class's."""

    def __call__(cls, *args, **kwargs):
        return wrap(cls.__wrapped__(*args, **kwargs))

    def __instancecheck__(cls, instance):
        return isinstance(instance, cls.__wrapped__)

    def __subclasscheck__(cls, subclass):
        return issubclass(subclass, cls.__wrapped__)

    def __getattr__(cls, name):
        return getattr(cls.__wrapped__, name)


def _stand_in(cls):
    return _StandIn(
        cls.__name__,
        (),
        {
            "__wrapped__": cls,
            "__module__": cls.__module__,
            "__doc__": cls.__doc__,
        },
    )


STAND_INS = {cls: _stand_in(cls) for cls in OPTIMIZER_CLASSES}
_original_get = src_optimizers.get


def _wrapping_get(identifier):
    optimizer = _original_get(identifier)
    if isinstance(identifier, keras.optimizers.Optimizer):
        return optimizer  # already built by the caller, wrapped or not
    if isinstance(optimizer, tuple(OPTIMIZER_CLASSES)):
        return wrap(optimizer)
    return optimizer


def _replace_classes(namespace):
    for name, value in list(vars(namespace).items()):
        if isinstance(value, type) and value in STAND_INS:
            setattr(namespace, name, STAND_INS[value])


def pytest_configure(config):
    if MODE not in keras_sgs.sgs_wrapper.MODES:
        raise pytest.UsageError(
            "Set KERAS_SGS_SUITE_MODE to one of "
            f"{keras_sgs.sgs_wrapper.MODES}. Received: {MODE!r}"
        )
    config.addinivalue_line(
        "markers", "requires_trainable_backend: (Keras) trainable backends"
    )
    config.addinivalue_line("markers", "multi_device: (Keras) several devices")
    for module in _PATCHED_MODULES:
        _replace_classes(module)
        module.get = _wrapping_get


def _expected_difference(nodeid):
    for pattern, reason in EXPECTED_DIFFERENCES.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def pytest_collection_modifyitems(session, config, items):
    seen = set()
    for item in items:
        module = item.getparent(pytest.Module).obj
        if module not in seen:
            seen.add(module)
            _replace_classes(module)
        reason = _expected_difference(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"expected: {reason}"))
        if "multi_device" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="Requires multiple devices")
            )


# {nodeid: {"outcome": "passed" | "failed" | "skipped", "message": str,
#            "wrappers": number of SGSWrappers the test built}}
RESULTS = {}
WRAPPED = {}
_current_test = None


def pytest_runtest_setup(item):
    global _current_test
    _current_test = item.nodeid


def _message(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2]
    return report.longreprtext[-3000:]


def pytest_runtest_logreport(report):
    if report.when != "call" and report.outcome == "passed":
        return
    # A failure in any phase (setup, call, teardown) wins.
    if RESULTS.get(report.nodeid, {}).get("outcome") in (None, "passed"):
        RESULTS[report.nodeid] = {
            "outcome": report.outcome,
            "message": _message(report),
        }


def pytest_collectreport(report):
    if report.failed:
        RESULTS[report.nodeid] = {
            "outcome": "failed",
            "message": _message(report),
        }


def pytest_sessionfinish(session, exitstatus):
    for nodeid, result in RESULTS.items():
        result["wrappers"] = WRAPPED.get(nodeid, 0)
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(RESULTS, f, indent=1)

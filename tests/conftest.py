"""Shared test set-up. Each backend runs in its own process
(`KERAS_BACKEND=tensorflow|jax|torch pytest`, see BUILD.md)."""

import logging
import os
import pathlib
import re

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND") == "torch":
    import torch  # noqa: F401  (before TensorFlow: TF then torch segfaults)

import keras

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_DIR = SHARED_DATA / "cifar10"
CIFAR100_DIR = SHARED_DATA / "cifar100"  # PNG, fine labels
BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPUs for MirroredStrategy tests; must happen before any
    # TensorFlow op runs.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="uses tf.distribute / tf.train"
)
jax_only = pytest.mark.skipif(
    BACKEND != "jax",
    reason="JAX compiles every eager op once per shape; the other backends "
    "run the small steps eagerly without compiling",
)


@pytest.fixture
def jax_compilations(caplog):
    """`compilations(call)`: the names of the functions that JAX compiles
    (XLA) while `call()` runs, e.g. `["dependence"]`."""
    import jax

    def compilations(call):
        caplog.clear()
        jax.config.update("jax_log_compiles", True)
        try:
            with caplog.at_level(logging.WARNING):
                call()
        finally:
            jax.config.update("jax_log_compiles", False)
        return [
            re.search(r"of jit\((.*)\)", r.getMessage()).group(1)
            for r in caplog.records
            if "Finished XLA compilation" in r.getMessage()
        ]

    return compilations


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    two strategies in one process can reuse collective keys and fail."""
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


@pytest.fixture(scope="session")
def cifar10_train():
    """256 real CIFAR-10 training images (float32 in [0, 1]) and labels."""
    from keras_sgs.tfrecords import read_image_records

    images, labels = read_image_records(
        str(CIFAR10_DIR / "train-00000-of-00008.tfrecord"), limit=256
    )
    return images.astype(np.float32) / 255.0, labels


@pytest.fixture(autouse=True)
def _clean_keras_state():
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")

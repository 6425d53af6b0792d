"""Tensors and variables to numpy, quietly on every backend."""

import keras
import numpy as np


def to_numpy(x):
    """`x` (a tensor of any backend, a `keras.Variable` or an array) as a
    numpy array.

    As `keras.ops.convert_to_numpy`, without numpy 2's `DeprecationWarning`
    that it gives for Keras variables (TensorFlow, JAX, PyTorch) and
    PyTorch tensors: their `__array__` takes no `copy` argument, which
    `np.array` passes and `np.asarray` does not.
    """
    if isinstance(x, keras.Variable):
        x = x.value
    if hasattr(x, "detach"):  # a PyTorch tensor, maybe on a GPU
        x = x.detach().cpu()
    return np.asarray(x)

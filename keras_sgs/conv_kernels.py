"""Which variables SGS scales: the spatial kernels of convolution layers.

An optimizer only sees variables, and variable names do not say which layer
made them: a Conv1D kernel and a rank-3 `EinsumDense` kernel (as in
`MultiHeadAttention`) are both called `kernel` and have the same rank. So
the selection goes through the layer objects: a variable is scaled if and
only if it is the `kernel` or `depthwise_kernel` of a live instance of one of
`CONV_LAYER_TYPES` (or a subclass) and has more than one spatial position.
The layers are found by their identity among the objects Python's garbage
collector tracks, once per optimizer build, so neither names, shapes nor a
model reference are needed.
"""

import gc
import math

import keras

CONV_LAYER_TYPES = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)
_KERNEL_NAMES = ("kernel", "depthwise_kernel")


def spatial_kernels(layer):
    """Returns the variables of one conv layer that SGS scales.

    These are the layer's own `kernel` / `depthwise_kernel` variables with
    more than one spatial position (`prod(kernel.shape[:-2]) > 1`); the
    pointwise kernel of a separable conv and 1x1 kernels are never scaled.

    Args:
        layer: a `keras.layers.Layer`.

    Returns:
        A list of `keras.Variable`s, empty for non-conv layers.
    """
    if not isinstance(layer, CONV_LAYER_TYPES) or not layer.built:
        return []
    return [
        w
        for w in layer.weights
        if w.name in _KERNEL_NAMES and math.prod(w.shape[:-2]) > 1
    ]


def _not_converted_by_autograph(fn):
    """`fn` as plain Python inside a user's `tf.function` too.

    AutoGraph rewrites the Python control flow of every function a
    `tf.function` calls, and marks a loop variable as undefined with a
    sentinel object before the loop; scanning `gc.get_objects()` meets that
    sentinel and fails ("'obj' is used before assignment"). The scan is
    bookkeeping, never graph code. Identity on the other backends.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


@_not_converted_by_autograph
def conv_kernel_owners(variables):
    """Maps each scaled conv kernel in `variables` to the layer owning it.

    Args:
        variables: iterable of `keras.Variable`s, e.g. a model's trainable
            variables.

    Returns:
        A dict `{id(variable): layer}` holding only the variables that are
        scaled conv kernels.
    """
    wanted = {id(v) for v in variables}
    owners = {}
    for obj in gc.get_objects():
        # `type()`, not `isinstance()`: the latter may call `__class__` on
        # lazy-module proxies and import (or warn about) arbitrary modules.
        if issubclass(type(obj), CONV_LAYER_TYPES):
            for kernel in spatial_kernels(obj):
                if id(kernel) in wanted:
                    owners[id(kernel)] = obj
    return owners

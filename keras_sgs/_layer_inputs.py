"""The inputs of chosen layers, captured in one compiled forward pass (the
layer inputs that `MIScalingCallback` estimates its masks from)."""

import contextlib
import threading

import keras
from keras import ops

from keras_sgs import _keras_private as private


def input_structure(model):
    """The structure of the inputs a Functional model, or a Sequential
    model with an `Input`, is called with (`KerasTensor`s); `None` for
    other models, whose inputs are not known before they run."""
    if isinstance(model, private.Functional):
        return model.input
    if isinstance(model, keras.Sequential):
        return (getattr(model, "inputs", None) or [None])[0]
    return None


def compiled_capture(model, layers):
    """Returns `f(x) -> [input of each layer]`, one compiled forward pass
    in inference mode (`tf.function` / `jax.jit`; eager on PyTorch).

    When every layer sits once in the graph of a Functional or Sequential
    model, the inputs are the outputs of a sub-model
    `keras.Model(model.inputs, [layer.input, ...])`; otherwise (subclassed
    or nested models, shared layers) they are recorded while the model runs
    (`recording_inputs`).
    """
    submodel = input_submodel(model, layers)
    if submodel is not None:

        def forward(x):
            # Each layer sees its input cast to its compute dtype
            # (float16 under mixed precision).
            outputs = keras.tree.flatten(submodel(x, training=False))
            return [
                ops.cast(t, layer.compute_dtype)
                for t, layer in zip(outputs, layers)
            ]

    else:

        def forward(x):
            with recording_inputs(layers) as captured:
                model(x, training=False)
            return captured

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def traced(x):
            return forward(x)

        return traced
    if backend == "jax":
        import jax

        def stateless(trainable, non_trainable, x):
            # `model.__call__` (not `stateless_call`, which skips the
            # `training` filtering for models whose call lacks it).
            mapping = list(zip(model.trainable_variables, trainable))
            mapping += list(zip(model.non_trainable_variables, non_trainable))
            with keras.StatelessScope(state_mapping=mapping):
                return forward(x)

        jitted = jax.jit(stateless)
        return lambda x: jitted(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
        )
    import torch

    def eager(x):
        with torch.no_grad():
            return forward(x)

    return eager


def input_submodel(model, layers):
    """`keras.Model(model.inputs, [layer.input ...])`, or `None` when some
    layer is not called exactly once in `model`'s own graph."""
    inputs = input_structure(model)  # None: no graph to take inputs from
    own = {id(layer) for layer in model.layers}
    if inputs is None or not all(
        id(layer) in own and private.inbound_node_count(layer) == 1
        for layer in layers
    ):
        return None
    return keras.Model(inputs, [layer.input for layer in layers])


# One recording at a time, in the thread that records.
_RECORDING_LOCK = threading.Lock()


@contextlib.contextmanager
def recording_inputs(layers):
    """Within the block, each layer's `call` records its first positional
    input of its first call (made by this thread) into the yielded list;
    the entry of a layer not called stays `None`.

    The layers' `call` is patched for the duration of the block only. A
    lock keeps two recordings from patching the same layers at once, and a
    call made meanwhile by another thread runs the original `call`
    unrecorded.
    """
    captured = [None] * len(layers)
    owner = threading.get_ident()
    with _RECORDING_LOCK:
        originals = []
        for i, layer in enumerate(layers):
            original = layer.call

            def call(inputs, *args, _i=i, _original=original, **kwargs):
                if captured[_i] is None and threading.get_ident() == owner:
                    captured[_i] = inputs
                return _original(inputs, *args, **kwargs)

            originals.append(layer.__dict__.get("call"))
            object.__setattr__(layer, "call", call)
        try:
            yield captured
        finally:
            for layer, original in zip(layers, originals):
                if original is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", original)

"""The held-out inputs of `MIScalingCallback`: read from every form `fit`
takes, and checked against the model's inputs."""

import itertools

import keras
import numpy as np

from keras_sgs._arrays import to_numpy
from keras_sgs._layer_inputs import input_structure


def held_out_inputs(data, num_batches, max_images):
    """The first `max_images` held-out inputs as numpy: the `x` of `data`
    itself when it is arrays (an array, or a list / tuple / dict of them),
    else of each of the first `num_batches` batches of the iterable,
    concatenated. `x` is taken as `fit` takes it from a batch
    (`keras.utils.unpack_x_y_sample_weight`)."""

    def is_array(x):
        return hasattr(x, "shape") and hasattr(x, "dtype")

    def first(*parts):
        """The first `max_images` rows of `parts`, as one numpy array."""
        parts = [to_numpy(x[:max_images]) for x in parts]
        return np.concatenate(parts)[:max_images]

    if is_array(data) or (
        isinstance(data, (list, tuple, dict))
        and data
        and all(x is None or is_array(x) for x in keras.tree.flatten(data))
    ):
        batches = [data]
    elif not hasattr(data, "__iter__") or isinstance(data, (str, bytes, dict)):
        raise ValueError(
            "`data` must be arrays (an array, or a list, tuple or dict of "
            "arrays) or a source of batches (a dataset, PyDataset, "
            "generator, iterator or DataLoader). Received: data of type "
            f"{type(data).__name__}"
        )
    else:
        batches = list(itertools.islice(data, num_batches))
        if not batches:
            raise ValueError(
                "`data` is empty. Received: an iterable with no batch"
            )
    inputs = keras.tree.map_structure(
        first, *[_inputs_of_batch(batch) for batch in batches]
    )
    arrays = keras.tree.flatten(inputs)
    for x in arrays:
        if x.ndim < 2 or not (
            np.issubdtype(x.dtype, np.number) or x.dtype == bool
        ):
            raise ValueError(
                "`data` must hold batches of numeric inputs (at least 2 "
                "axes: examples first). Received: an array of shape "
                f"{x.shape} and dtype {x.dtype}"
            )
    sizes = {len(x) for x in arrays}
    if 0 in sizes:
        raise ValueError(
            "`data` holds no held-out input. Received: arrays of "
            f"{sorted(sizes)} rows"
        )
    return inputs


def _inputs_of_batch(batch):
    """The `x` of a batch `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`
    (a list as a tuple), as `fit` reads it."""
    try:
        return keras.utils.unpack_x_y_sample_weight(batch)[0]
    except ValueError:
        raise ValueError(
            "`data` (or each of its batches) must be `x`, `(x,)`, `(x, y)` "
            "or `(x, y, sample_weight)`, as a batch of `fit`; several "
            "inputs go in a dict or `([x1, x2, ...],)`. Received: a "
            f"{type(batch).__name__} of {len(batch)} items of shapes "
            f"{_shapes(batch)}"
        ) from None


def _shapes(structure):
    """The shapes of a structure of arrays or tensors, in its structure."""
    return keras.tree.map_structure(
        lambda x: None if x is None else tuple(x.shape), structure
    )


def check_inputs_fit_model(inputs, model):
    """Raises a `ValueError` when the inputs cannot be the model's: another
    number of arrays, a dict without some input of a model that takes a
    dict, or an array whose rank or known dimensions (past the batch axis)
    differ from its input's. Models whose inputs are not known pass."""
    expected = input_structure(model)
    if expected is None:
        return
    by_name = isinstance(expected, dict) and isinstance(inputs, dict)
    if by_name:
        fits = set(expected) <= set(inputs)
    else:
        fits = len(keras.tree.flatten(inputs)) == len(
            keras.tree.flatten(expected)
        )
    if not fits:
        raise ValueError(
            "MIScalingCallback: the inputs of `data` do not fit the model. "
            f"Received: inputs of shapes {_shapes(inputs)}; the model "
            f"expects inputs of shapes {_shapes(expected)}. `data` (or "
            "each of its batches) is read as `fit` reads a batch: `x`, "
            "`(x, y)` or `(x, y, sample_weight)`, a list as a tuple; "
            "pass several inputs in a dict or as `([x1, x2, ...],)`."
        )
    if by_name:
        pairs = [(expected[k], inputs[k]) for k in expected]
    else:
        pairs = zip(keras.tree.flatten(expected), keras.tree.flatten(inputs))
    for spec, x in pairs:
        want, got = tuple(spec.shape), tuple(x.shape)
        if len(got) != len(want) or any(
            w is not None and w != g for w, g in zip(want[1:], got[1:])
        ):
            raise ValueError(
                "MIScalingCallback: an input of `data` has the wrong shape "
                f"for the model. Received: an array of shape {got}; the "
                f"model's input `{spec.name}` takes shape {want} (the "
                "first axis is the batch: pass images as a batch, e.g. "
                "`x[None]` for one image)."
            )

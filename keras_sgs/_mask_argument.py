"""The `masks=` argument of `SGSWrapper`: its forms, checked; the initial
mask each scaled kernel takes from it; its config."""

import keras
import numpy as np

from keras_sgs import masks as masks_lib

# The name of an array `masks=` among the keys that must be used.
_ARRAY = "array"


def parse(masks):
    """Checks `masks=`; returns `None`, a float32 array, a dict of them
    (by layer name or variable path) or a callable."""
    if masks is None or callable(masks):
        return masks
    if isinstance(masks, dict):
        for key in masks:
            if not isinstance(key, str):
                raise ValueError(
                    "The keys of `masks` must be layer names or variable "
                    f"paths (str). Received: key={key!r}"
                )
        return {k: _array(v, f"masks[{k!r}]") for k, v in masks.items()}
    return _array(masks, "masks")


def _array(value, name):
    array = masks_lib.as_mask_array(value, name)
    if not 1 <= array.ndim <= 5 or array.size == 0:
        raise ValueError(
            f"`{name}` must be a mask of the kernel's spatial shape, e.g. "
            f"(3, 3). Received: {name} with shape {array.shape}"
        )
    return array


def keys_to_use(masks):
    """What of the parsed `masks` must fit some scaled kernel: the dict's
    keys, or the one array."""
    if isinstance(masks, dict):
        return set(masks)
    if isinstance(masks, np.ndarray):
        return {_ARRAY}
    return set()


def initial_mask(masks, layer, kernel):
    """The initial mask of one scaled kernel from the parsed `masks`.

    Returns:
        `(mask, key)`: the mask as stored (a float32 array that broadcasts
        to the kernel; ones of `kernel.shape[:-2] + (1, 1)` where `masks`
        gives none) and what of `masks` it used (a key of
        `keys_to_use(masks)`, or `None`).
    """
    kernel_shape = tuple(kernel.shape)
    value, key, name = None, None, "masks"
    if isinstance(masks, dict):
        key = next((k for k in (layer.name, kernel.path) if k in masks), None)
        if key is not None:
            value, name = masks[key], f"masks[{key!r}]"
    elif callable(masks):
        try:
            value = masks(layer, kernel)
        except Exception as error:
            raise ValueError(
                f"The `masks` function raised for layer '{layer.name}' "
                f"(kernel {kernel.path} of shape {kernel_shape}): "
                f"{type(error).__name__}: {error}"
            ) from error
        name = f"masks({layer.name!r}, {kernel.path!r})"
    elif masks is not None and (
        masks.shape == kernel_shape[:-2]
        or masks_lib.broadcasts_to(masks.shape, kernel_shape)
    ):
        value, key = masks, _ARRAY
    if value is None:
        return np.ones(kernel_shape[:-2] + (1, 1), np.float32), None
    try:
        return masks_lib.kernel_mask(value, kernel_shape, name), key
    except ValueError as error:
        raise ValueError(
            f"The mask for layer '{layer.name}' (kernel {kernel.path} of "
            f"shape {kernel_shape}) is invalid: {error} (mask shape "
            f"{np.shape(value)})"
        ) from None


def unused_message(unused, masks, scaled_paths):
    """The error for parts of `masks` that fit no scaled kernel."""
    if unused == {_ARRAY}:
        unused = {f"array of shape {masks.shape}"}
    return (
        "Some `masks` of this SGSWrapper match no scaled conv kernel. "
        f"Unused: {sorted(unused)}. Scaled kernels: {scaled_paths}"
    )


def to_config(masks):
    """The parsed `masks` in a JSON-friendly form (a function as Keras
    serializes activations)."""
    if callable(masks):
        return keras.saving.serialize_keras_object(masks)
    if isinstance(masks, dict):
        return {k: v.tolist() for k, v in masks.items()}
    return None if masks is None else masks.tolist()


def from_config(config, custom_objects=None):
    """The `masks=` argument of a config written by `to_config`."""
    if isinstance(config, dict) and config.get("class_name") in (
        "function",
        "__lambda__",
    ):
        return keras.saving.deserialize_keras_object(
            config, custom_objects=custom_objects
        )
    return config

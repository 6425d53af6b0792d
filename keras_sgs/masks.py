"""Spatial masks: construction from branches and validation.

The math of SGS as small pure functions on numpy arrays. A *mask* (the
paper's `S`) has the spatial shape of a convolution kernel, e.g. `(3, 3)`;
stored for a kernel of shape `(kh, kw, in, out)` it has shape
`(kh, kw, 1, 1)` so that it broadcasts over the two channel axes of every
Keras convolution kernel layout.
"""

import numpy as np


def _spatial_size(name, value):
    """Return `value` as a tuple of positive ints (1 to 3 of them)."""
    size = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        size = tuple(size)
    except TypeError:
        size = None
    if (
        size is None
        or not 1 <= len(size) <= 3
        or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool)
            for s in size
        )
        or min(size) < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of 1 to 3 positive "
            f"ints. Received: {name}={value!r}"
        )
    return tuple(int(s) for s in size)


def mask_from_branches(kernel_size, branches, normalize=False):
    """Returns the SGS mask equivalent to a block of parallel conv branches.

    A block that sums parallel convolutions `W = sum_i a_i * pad(V_i)`, each
    branch `V_i` centred in the `kernel_size` window and multiplied by a
    constant scalar `a_i`, trains under SGD exactly like one convolution
    whose kernel gradient is multiplied by

    ```python
    S = sum_i a_i**2 * M_i
    ```

    where `M_i` is 1 on the positions the branch covers and 0 elsewhere
    (Detkov et al., ICLR 2023, and `../docs/method.md`). An identity branch
    (RepVGG) is a `(1, 1)` branch.

    Example:

    ```python
    # ACNet's asymmetric block: 3x3 + 1x3 + 3x1.
    mask = keras_sgs.mask_from_branches(
        (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
    )
    # [[1, 2, 1],
    #  [2, 3, 2],
    #  [1, 2, 1]]
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1), masks=mask)
    ```

    Args:
        kernel_size: int or tuple of 1 to 3 ints. The spatial size of the
            fused kernel.
        branches: list of `(branch_kernel_size, scalar)` pairs. Each branch
            size has the rank of `kernel_size`, fits inside it and leaves an
            even margin on every axis so that it can be centred.
        normalize: bool. If `True`, divide the mask by its mean so that the
            average learning rate is unchanged. Defaults to `False`.

    Returns:
        A float32 numpy array of shape `kernel_size`.
    """
    size = _spatial_size("kernel_size", kernel_size)
    if isinstance(branches, (str, bytes)) or not hasattr(branches, "__iter__"):
        raise TypeError(
            "`branches` must be a list of (branch_kernel_size, scalar) "
            f"pairs. Received: branches={branches!r}"
        )
    branches = list(branches)
    if not branches:
        raise ValueError(
            "`branches` must contain at least one (branch_kernel_size, "
            "scalar) pair. Received: branches=[]"
        )
    mask = np.zeros(size, dtype=np.float64)
    for branch in branches:
        try:
            branch_size, scalar = branch
        except (TypeError, ValueError):
            raise ValueError(
                "Each entry of `branches` must be a (branch_kernel_size, "
                f"scalar) pair. Received: {branch!r}"
            ) from None
        branch_size = _spatial_size("branch_kernel_size", branch_size)
        if len(branch_size) != len(size) or any(
            b > k or (k - b) % 2 for b, k in zip(branch_size, size)
        ):
            raise ValueError(
                f"A branch of size {branch_size} cannot be centred in a "
                f"kernel of size {size}: it needs the same rank, to fit, "
                "and an even margin on every axis. Received: "
                f"branch_kernel_size={branch_size}, kernel_size={size}"
            )
        scalar = float(scalar)
        if not np.isfinite(scalar):
            raise ValueError(
                f"Branch scalars must be finite. Received: scalar={scalar}"
            )
        window = tuple(
            slice((k - b) // 2, (k - b) // 2 + b)
            for b, k in zip(branch_size, size)
        )
        mask[window] += scalar**2
    if normalize:
        mean = mask.mean()
        if mean == 0:
            raise ValueError(
                "Cannot normalize a mask whose mean is 0 (every branch "
                f"scalar is 0). Received: branches={branches!r}"
            )
        mask = mask / mean
    return mask.astype(np.float32)


def validate_mask(value, spatial_shape, name="value"):
    """Checks a mask value and returns it as float32 of shape `+ (1, 1)`.

    Accepts the kernel's spatial shape or that shape followed by `(1, 1)`.
    Values must be finite and non-negative (a negative entry would reverse
    the gradient at that position).

    Args:
        value: array-like. The mask.
        spatial_shape: tuple of ints. `kernel.shape[:-2]`.
        name: str. The argument name used in error messages.

    Returns:
        A float32 numpy array of shape `spatial_shape + (1, 1)`.
    """
    spatial_shape = tuple(spatial_shape)
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of numbers. Received: {name}={value!r}"
        ) from None
    if array.shape not in (spatial_shape, spatial_shape + (1, 1)):
        raise ValueError(
            f"`{name}` must have shape {spatial_shape} or "
            f"{spatial_shape + (1, 1)} (the kernel's spatial shape). "
            f"Received: {name} with shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(
            f"`{name}` must be finite and non-negative. Received: "
            f"{name}={array.reshape(spatial_shape).tolist()}"
        )
    return array.reshape(spatial_shape + (1, 1))

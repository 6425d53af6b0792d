"""Masks: construction from branches and validation.

The math of SGS as small pure functions on numpy arrays. A *mask* (the
paper's `S`) has the spatial shape of a convolution kernel, e.g. `(3, 3)`;
stored for a kernel of shape `(kh, kw, in, out)` it has shape
`(kh, kw, 1, 1)` so that it broadcasts over the two channel axes of every
Keras convolution kernel layout. A mask may also carry channels, as long as
it broadcasts to the kernel: `(kh, kw, 1, out)` per output channel
(RepOptimizer's multipliers, see `mask_from_channel_branches` and
`csla_conv`) or the full kernel shape.
"""

import keras
import numpy as np

from keras_sgs._arrays import to_numpy
from keras_sgs._checks import check_int
from keras_sgs._checks import check_size


def _spatial_size(name, value):
    """`value` as a tuple of 1 to 3 positive ints."""
    return check_size(name, value, range(1, 4))


def _centred_window(branch_size, size):
    """The slices of a `size` window that a centred branch covers."""
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
    return tuple(
        slice((k - b) // 2, (k - b) // 2 + b) for b, k in zip(branch_size, size)
    )


def _parse_branches(size, branches, value_name, convert):
    """`[(window slices, convert(value)), ...]` of the `(branch_kernel_size,
    value)` pairs `branches`, each branch centred in a kernel of spatial
    `size`."""
    if isinstance(branches, (str, bytes)) or not hasattr(branches, "__iter__"):
        raise ValueError(
            f"`branches` must be a list of (branch_kernel_size, {value_name}) "
            f"pairs. Received: branches={branches!r}"
        )
    parsed = []
    for branch in branches:
        try:
            branch_size, value = branch
        except (TypeError, ValueError):
            raise ValueError(
                "Each entry of `branches` must be a (branch_kernel_size, "
                f"{value_name}) pair. Received: {branch!r}"
            ) from None
        parsed.append((_centred_window(branch_size, size), convert(value)))
    if not parsed:
        raise ValueError(
            "`branches` must contain at least one (branch_kernel_size, "
            f"{value_name}) pair. Received: branches=[]"
        )
    return parsed


def _branch_scalar(value):
    scalar = float(value)
    if not np.isfinite(scalar):
        raise ValueError(
            f"Branch scalars must be finite. Received: scalar={scalar}"
        )
    return scalar


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
    (Detkov et al., ICLR 2023; `docs/guide.md`, "The method"). An identity
    branch (RepVGG) is a `(1, 1)` branch.

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
    parsed = _parse_branches(size, branches, "scalar", _branch_scalar)
    mask = np.zeros(size, dtype=np.float64)
    for window, scalar in parsed:
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


def _channel_scales(name, value):
    """`value` as a finite float64 array of shape `()` or `(channels,)`."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim > 1 or array.size == 0:
        raise ValueError(
            f"`{name}` must be a number or a 1-D array with one scale per "
            f"output channel. Received: {name}={value!r}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"`{name}` must be finite. Received: {name}={array.tolist()}"
        )
    return array


def _common_channels(named_scales):
    """The one channel count of the 1-D scales (1 if all are scalars)."""
    counts = {n: s.shape[0] for n, s in named_scales if s.ndim == 1}
    if len(set(counts.values())) > 1:
        raise ValueError(
            "Per-channel scales must all have the same length (the number "
            f"of output channels). Received lengths: {counts}"
        )
    return next(iter(counts.values()), 1)


def mask_from_channel_branches(kernel_size, branches):
    """Returns the per-output-channel mask of a block of scaled branches.

    The per-channel form of `mask_from_branches`, as in RepOptimizer (Ding
    et al., ICLR 2023). A block that sums parallel convolutions, each branch
    `V_i` centred in the `kernel_size` window and its output channel `c`
    multiplied by a constant `a_i[c]`,
    `W[..., c] = sum_i a_i[c] * pad(V_i)[..., c]`, trains under SGD exactly
    like one convolution whose kernel gradient is multiplied by

    ```python
    S[..., 0, c] = sum_i a_i[c]**2 * M_i
    ```

    where `M_i` is 1 on the positions branch `i` covers. A constant branch
    (an identity with fixed scales) has no gradient and adds nothing to the
    mask; it only enters the initial kernel (see `csla_conv`).

    Example:

    ```python
    # RepOptimizer's CSLA block: 3x3 scaled by a, 1x1 scaled by b.
    a, b = np.full(64, 1.0), np.full(64, 0.5)
    mask = keras_sgs.mask_from_channel_branches(
        (3, 3), [((3, 3), a), ((1, 1), b)]
    )  # shape (3, 3, 1, 64): a**2 everywhere, a**2 + b**2 at the centre
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9), masks={"conv": mask}
    )
    ```

    Args:
        kernel_size: int or tuple of 1 to 3 ints. The spatial size of the
            fused kernel.
        branches: list of `(branch_kernel_size, scales)` pairs. Each branch
            size has the rank of `kernel_size`, fits inside it and leaves an
            even margin on every axis. `scales` is a number (the same for
            every channel) or a 1-D array with one scale per output
            channel; all 1-D scales have the same length.

    Returns:
        A float32 numpy array of shape `kernel_size + (1, out)`, `out` the
        length of the per-channel scales (1 if every scale is a number).
    """
    size = _spatial_size("kernel_size", kernel_size)
    parsed = _parse_branches(
        size, branches, "scales", lambda v: _channel_scales("scales", v)
    )
    channels = _common_channels(
        [(f"branches[{i}]", s) for i, (_, s) in enumerate(parsed)]
    )
    mask = np.zeros(size + (1, channels), dtype=np.float64)
    for window, scales in parsed:
        mask[window] += np.broadcast_to(scales**2, (channels,))
    return mask.astype(np.float32)


def fuse_csla_kernels(kernel, kernel_1x1, scale, scale_1x1, identity=None):
    """Fuses a CSLA block's branch kernels into one kernel (numpy).

    `W[..., c] = scale[c] * kernel[..., c] + scale_1x1[c] *
    pad(kernel_1x1)[..., c] + identity[c] * I[..., c]`, where `I` is the
    identity kernel (1 at the centre where the input channel equals the
    output channel).

    Args:
        kernel: array of shape `kernel_size + (in, out)`.
        kernel_1x1: array of shape `(1,) * rank + (in, out)`, or `None`.
        scale: number or 1-D array of `out` scales of `kernel`.
        scale_1x1: number or 1-D array of `out` scales of `kernel_1x1`.
        identity: `None` (no identity branch), or a number or 1-D array of
            `out` identity scales; needs `in == out`.

    Returns:
        A float64 numpy array of the shape of `kernel`.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    size = kernel.shape[:-2]
    centre = tuple(k // 2 for k in size)
    fused = _channel_scales("scale", scale) * kernel
    if kernel_1x1 is not None:
        fused[centre] += _channel_scales("scale_1x1", scale_1x1) * np.asarray(
            kernel_1x1, dtype=np.float64
        ).reshape(kernel.shape[-2:])
    if identity is not None:
        in_channels, out_channels = kernel.shape[-2:]
        if in_channels != out_channels:
            raise ValueError(
                "An identity branch needs as many input as output channels. "
                f"Received: in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        fused[centre] += np.diag(
            np.broadcast_to(
                _channel_scales("identity", identity), (out_channels,)
            )
        )
    return fused


def csla_conv(
    kernel_size,
    in_channels,
    out_channels,
    scale_3x3,
    scale_1x1,
    identity=True,
    initializer="glorot_uniform",
    seed=None,
):
    """Returns RepOptimizer's gradient mask and initial kernel of one conv.

    RepOptimizer (Ding et al., ICLR 2023) trains a plain conv as if it were
    a CSLA block (constant-scale linear addition): a `kernel_size` conv and
    a 1x1 conv whose output channels are multiplied by constant scales
    `scale_3x3[c]` and `scale_1x1[c]`, plus an identity branch when
    `in_channels == out_channels`. The plain conv starts at the block's
    fused kernel, and its gradient is multiplied per output channel by
    `scale_3x3[c]**2` everywhere plus `scale_1x1[c]**2` at the centre
    (`mask_from_channel_branches`). The identity branch is constant: it
    only enters the initial kernel. (RepOptimizer's code also adds 1 on
    the centre diagonal of the mask, the multiplier of a *trainable*
    identity; pass a full-kernel-shape mask for that.)

    Example:

    ```python
    mask, kernel = keras_sgs.csla_conv(
        (3, 3), 64, 64, scale_3x3=np.ones(64), scale_1x1=np.ones(64), seed=0
    )
    conv = keras.layers.Conv2D(64, 3, padding="same", name="conv")
    conv.build((None, 32, 32, 64))
    conv.kernel.assign(kernel)
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9), masks={"conv": mask}
    )
    ```

    Args:
        kernel_size: int or tuple of 1 to 3 odd ints. The conv's spatial
            size (3x3 in RepOptimizer).
        in_channels: int. Input channels.
        out_channels: int. Output channels.
        scale_3x3: number or 1-D array of `out_channels` scales of the
            `kernel_size` branch.
        scale_1x1: number or 1-D array of `out_channels` scales of the 1x1
            branch.
        identity: `True` (an identity branch of scale 1 when
            `in_channels == out_channels`, none otherwise), `False` (none),
            or a number or 1-D array of `out_channels` identity scales
            (requires `in_channels == out_channels`). Defaults to `True`.
        initializer: a Keras initializer (name, config or instance) drawing
            each branch's kernel. Defaults to `"glorot_uniform"`, Keras'
            conv default.
        seed: int or `None`. Seeds the draws (the 1x1 draw uses
            `seed + 1`). Defaults to `None`.

    Returns:
        A pair `(mask, initial_kernel)` of float32 numpy arrays of shapes
        `kernel_size + (1, out_channels)` and
        `kernel_size + (in_channels, out_channels)`.
    """
    size = _spatial_size("kernel_size", kernel_size)
    if any(k % 2 == 0 for k in size):
        raise ValueError(
            "`kernel_size` must be odd on every axis, so that the 1x1 and "
            f"identity branches have a centre. Received: kernel_size={size}"
        )
    in_channels = check_int("in_channels", in_channels, minimum=1)
    out_channels = check_int("out_channels", out_channels, minimum=1)
    scales = [
        ("scale_3x3", _channel_scales("scale_3x3", scale_3x3)),
        ("scale_1x1", _channel_scales("scale_1x1", scale_1x1)),
    ]
    if identity is True:
        identity = 1.0 if in_channels == out_channels else None
    elif identity is False or identity is None:
        identity = None
    else:
        scales.append(("identity", _channel_scales("identity", identity)))
    for name, s in scales:
        if s.ndim == 1 and s.shape[0] != out_channels:
            raise ValueError(
                f"`{name}` must hold one scale per output channel "
                f"({out_channels}). Received: {name} of length {s.shape[0]}"
            )
    ones = (1,) * len(size)
    draws = []
    for offset, shape in enumerate([size, ones]):
        init = keras.initializers.get(initializer)
        if seed is not None:
            init = init.__class__.from_config(
                {**init.get_config(), "seed": seed + offset}
            )
        draws.append(
            to_numpy(init(shape + (in_channels, out_channels), dtype="float32"))
        )
    kernel = fuse_csla_kernels(
        draws[0], draws[1], scale_3x3, scale_1x1, identity=identity
    )
    mask = mask_from_channel_branches(
        size, [(size, scale_3x3), (ones, scale_1x1)]
    )
    mask = np.broadcast_to(mask, size + (1, out_channels))
    return mask.astype(np.float32), kernel.astype(np.float32)


def as_mask_array(value, name):
    """`value` as a float32 numpy array, checked to be finite and
    non-negative: the one validator of mask values."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be an array of numbers. Received: {name}={value!r}"
        ) from None
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(
            f"`{name}` must be finite and non-negative. Received: "
            f"{name}={array.tolist()}"
        )
    return array


def broadcasts_to(shape, kernel_shape):
    """Whether a mask of `shape` broadcasts to `kernel_shape` (same rank,
    each axis 1 or the kernel's)."""
    shape, kernel_shape = tuple(shape), tuple(kernel_shape)
    return len(shape) == len(kernel_shape) and all(
        m in (1, k) for m, k in zip(shape, kernel_shape)
    )


def kernel_mask(value, kernel_shape, name="mask"):
    """Checks the initial mask of one kernel; returns it as stored.

    Accepts the kernel's spatial shape (stored as that shape followed by
    `(1, 1)`) or any array of the kernel's rank that broadcasts to it:
    `(kh, kw, 1, 1)`, `(kh, kw, 1, out)` per output channel, the full
    kernel shape. Values must be finite and non-negative.

    Args:
        value: array-like. The mask.
        kernel_shape: tuple of ints. The kernel's shape.
        name: str. The argument name used in error messages.

    Returns:
        A float32 numpy array of the kernel's rank.
    """
    kernel_shape = tuple(kernel_shape)
    array = as_mask_array(value, name)
    if array.shape == kernel_shape[:-2]:
        return array.reshape(kernel_shape[:-2] + (1, 1))
    if not broadcasts_to(array.shape, kernel_shape):
        raise ValueError(
            f"`{name}` must have the kernel's spatial shape "
            f"{kernel_shape[:-2]} or a shape of the kernel's rank that "
            f"broadcasts to the kernel shape {kernel_shape}, e.g. "
            f"{kernel_shape[:-2] + (1, kernel_shape[-1])} per output "
            f"channel. Received: {name} with shape {array.shape}"
        )
    return array


def mask_value(value, mask_shape, name="value"):
    """Checks a new value for a mask variable of `mask_shape`.

    Accepts `mask_shape` itself, or a spatial mask (`mask_shape[:-2]`,
    optionally followed by `(1, 1)`, as `MIScalingCallback` estimates)
    that is broadcast to `mask_shape`.

    Args:
        value: array-like. The new mask.
        mask_shape: tuple of ints. The mask variable's shape.
        name: str. The argument name used in error messages.

    Returns:
        A float32 numpy array of shape `mask_shape`.
    """
    mask_shape = tuple(mask_shape)
    spatial = mask_shape[:-2]
    array = as_mask_array(value, name)
    if array.shape == mask_shape:
        return array
    if array.shape in (spatial, spatial + (1, 1)):
        return np.broadcast_to(
            array.reshape(spatial + (1, 1)), mask_shape
        ).copy()
    raise ValueError(
        f"`{name}` must have the mask's shape {mask_shape} or its spatial "
        f"shape {spatial} (broadcast over the channels). Received: {name} "
        f"with shape {array.shape}"
    )


def spatial_mean(mask):
    """The mean over the two channel axes: a mask's spatial picture."""
    mask = np.asarray(mask)
    return mask.mean(axis=(-2, -1))

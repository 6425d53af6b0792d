"""The SGS-MI estimator: spatial dependence of a feature map, in `keras.ops`.

For a conv layer's input feature map, `spatial_dependence` measures how much
information the pixel at each kernel offset carries about the centre pixel
(normalised mutual information from 2-D histograms, sharpened with `k`),
and `dependence_to_scaling` turns that into the layer's SGS mask. See
`../docs/method.md` section 3 (Detkov et al., ICLR 2023) for the rule; the
authors' code decides the details the paper leaves open.

All channels and all displacements are processed at once (no Python loop
over channels), in float32 whatever the input dtype, with the histogram
size fixed from the static number of pairs, so the computation is traced
once per input shape (`tf.function` / `jax.jit`; eager on PyTorch).
Channels are processed in chunks so that the extra memory stays around the
size of the feature map itself.
"""

import functools
import itertools
import math

import keras
import numpy as np
from keras import ops

from keras_sgs._numbers import is_int
from keras_sgs._numbers import is_real

PADDINGS = ("same", "valid", "causal")
# Chunk size: about this many bytes of working memory per (displacement,
# pixel, channel) keeps the peak extra memory, compilation included, under
# twice the map (benchmarks/mi_refresh.py measures it on an ImageNet-sized
# map).
_BYTES_PER_PAIR = 20
# `D` of a channel without any pair left (diagonal removal); `D` >= 0.
_NO_PAIR = -1.0


def spatial_dependence(
    feature_map,
    kernel_size,
    k=5.0,
    padding="same",
    dilation_rate=1,
    diagonal_removal=False,
):
    """Returns the spatial dependence `D` of a conv layer's input.

    For each offset `o` of the kernel window other than the centre, every
    pixel `X` of the (padded) map is paired with its neighbour `Y` at
    displacement `dilation_rate * o`, per channel, and

    ```python
    B = 1 + ceil(log2(n))           # bins per axis, n = number of pairs
    bin(x) = floor((x - min) * B / (max - min + 1e-12))  # max in last bin
    NMI = (H_X + H_Y - H_XY) / H_XY  # entropies in bits of the histograms
    D = k * NMI / ((k - 1) * NMI + 1)
    ```

    `D` is averaged over channels ignoring NaN (a constant channel gives
    0/0), mirrored (`D[-o] = D[o]`) and set to 1 at the centre. Unlike the
    authors' code, a dilated kernel's neighbours are `dilation_rate * o`
    pixels away, and maps of 1-D and 3-D convolutions are supported.

    With `diagonal_removal=True` (the authors' ImageNet setting, for ReLU
    maps that are mostly zero) pairs where either value is 0 are dropped,
    the bin count follows the number of pairs left in each channel, the
    histogram's main diagonal is zeroed before the entropies, and, as in
    the authors' code, a channel with no pair left or a NaN estimate counts
    as `D = 0`.

    Non-finite and degenerate input, on every backend: a channel holding a
    NaN or an infinity (e.g. after a diverged step) is left out of the
    average, as a constant channel is. A displacement whose estimate rests
    on no channel (every channel constant or non-finite: a dead layer, an
    all-NaN map) or on no pair (diagonal removal leaving nothing in any
    channel's histogram) has
    `D = NaN`: the estimate is undefined, and `MIScalingCallback` keeps
    the layer's previous mask.

    Example:

    ```python
    images = np.random.rand(8, 32, 32, 3).astype("float32")
    d = keras_sgs.spatial_dependence(images, (3, 3))
    s = keras_sgs.dependence_to_scaling(d)  # the mask, mean 1
    ```

    Args:
        feature_map: channels-last tensor `(batch, *spatial, channels)` with
            1 to 3 spatial axes, unpadded (the layer's input).
        kernel_size: int or tuple of ints, one per spatial axis.
        k: float > 0. Sharpening of the normalised MI. Defaults to 5.
        padding: `"same"`, `"valid"` or `"causal"` (1-D), as the layer pads
            its input (with zeros). Defaults to `"same"`.
        dilation_rate: int or tuple of ints. Defaults to 1.
        diagonal_removal: bool. Defaults to `False`.

    Returns:
        A float32 tensor of shape `kernel_size`.
    """
    shape = tuple(feature_map.shape)
    rank = len(shape) - 2
    if not 1 <= rank <= 3 or any(s is None for s in shape):
        raise ValueError(
            "`feature_map` must be a channels-last tensor (batch, *spatial, "
            "channels) with 1 to 3 spatial axes and a static shape. "
            f"Received: feature_map with shape {shape}"
        )
    if shape[0] == 0 or shape[-1] == 0:
        raise ValueError(
            "`feature_map` must hold at least one example and one channel. "
            f"Received: feature_map with shape {shape}"
        )
    kernel_size = _int_tuple("kernel_size", kernel_size, rank)
    dilation_rate = _int_tuple("dilation_rate", dilation_rate, rank)
    if all(s == 1 for s in kernel_size):
        raise ValueError(
            "`kernel_size` must have more than one position (a 1x1 kernel "
            f"has no neighbour to measure). Received: kernel_size="
            f"{kernel_size}"
        )
    if padding not in PADDINGS or (padding == "causal" and rank != 1):
        raise ValueError(
            f"`padding` must be one of {PADDINGS} ('causal' for 1-D maps "
            f"only). Received: padding={padding!r}"
        )
    if padding == "valid" and any(
        n < (s - 1) * r + 1
        for n, s, r in zip(shape[1:-1], kernel_size, dilation_rate)
    ):
        raise ValueError(
            "With padding='valid' the map must be at least as large as the "
            f"(dilated) kernel window. Received: feature_map with shape "
            f"{shape}, kernel_size={kernel_size}, dilation_rate="
            f"{dilation_rate}"
        )
    if not (is_real(k) and k > 0 and math.isfinite(k)):
        raise ValueError(f"`k` must be a positive number. Received: k={k!r}")
    fn = _compiled(
        shape,
        str(feature_map.dtype),
        kernel_size,
        float(k),
        padding,
        dilation_rate,
        bool(diagonal_removal),
    )
    return fn(feature_map)


def dependence_to_scaling(dependence):
    """Returns the SGS mask `S = D / mean(D)` of a spatial dependence `D`.

    Example:

    ```python
    keras_sgs.dependence_to_scaling(np.array([[0.5, 1.0, 0.5]]))
    # [[0.75, 1.5, 0.75]]
    ```

    Args:
        dependence: tensor `D`, e.g. from `spatial_dependence`.

    Returns:
        A float32 tensor of the same shape with mean 1 (NaN where `D` has
        NaN or its mean is 0).
    """
    dependence = ops.cast(dependence, "float32")
    return dependence / ops.mean(dependence)


def _int_tuple(name, value, rank):
    error = ValueError(
        f"`{name}` must be a positive int or a tuple of {rank} positive "
        f"ints (one per spatial axis). Received: {name}={value!r}"
    )
    if is_int(value):
        values = (value,) * rank
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise error from None
    if len(values) != rank or not all(is_int(v) and v >= 1 for v in values):
        raise error
    return tuple(int(v) for v in values)


def _displacements(kernel_size, dilation_rate):
    """Static plan: the window's offsets grouped by displacement +-d.

    Returns a list of `(displacement, [window indices])`, one entry per
    pair {d, -d}, with `d` the lexicographically positive one.
    """
    groups = {}
    for index in itertools.product(*(range(s) for s in kernel_size)):
        offset = tuple(
            (i - (s - 1) // 2) * r
            for i, s, r in zip(index, kernel_size, dilation_rate)
        )
        if any(offset):
            key = max(offset, tuple(-o for o in offset))
            groups.setdefault(key, []).append(index)
    return sorted(groups.items())


def _pads(kernel_size, dilation_rate, padding):
    pads = []
    for s, r in zip(kernel_size, dilation_rate):
        total = (s - 1) * r if padding != "valid" else 0
        left = total if padding == "causal" else total // 2
        pads.append((left, total - left))
    return pads


@functools.lru_cache(maxsize=256)
def _compiled(shape, dtype, kernel_size, k, padding, dilation_rate, diagonal_removal):
    """One compiled estimator per input shape and static configuration,
    so that each traces exactly once."""
    plan = _displacements(kernel_size, dilation_rate)

    def estimate(feature_map):
        per_displacement = _dependence_per_displacement(
            feature_map,
            [d for d, _ in plan],
            _pads(kernel_size, dilation_rate, padding),
            k,
            diagonal_removal,
        )  # (displacements, channels)
        mean = _mean_over_channels(per_displacement)
        # Scatter each displacement's value to its window positions.
        which = np.full(kernel_size, len(plan), dtype="int32")  # centre
        for i, (_, indices) in enumerate(plan):
            for index in indices:
                which[index] = i
        return ops.take(ops.concatenate([mean, ops.ones((1,))]), which)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(estimate, jit_compile=False)
    if backend == "jax":
        import jax

        return jax.jit(estimate)
    return estimate


def _nanmean(x, axis):
    finite = ops.logical_not(ops.isnan(x))
    total = ops.sum(ops.where(finite, x, 0.0), axis=axis)
    return total / ops.sum(ops.cast(finite, "float32"), axis=axis)


def _dependence_per_displacement(feature_map, displacements, pads, k, diagonal_removal):
    """`D` for every (displacement, channel) of a map, zero-padded by `pads`.

    Each displacement `d` pairs `x[p]` with `x[p + d]` for the positions `p`
    where both lie inside the padded map `x`. To treat all displacements at
    once they share the index set `p` of the whole map, with a static
    validity mask. The channels are processed in chunks (`ops.map`), each
    sliced, cast to float32 and padded by itself, so that the extra memory
    stays bounded by the chunk's working set.
    """
    batch, channels = feature_map.shape[0], feature_map.shape[-1]
    spatial = tuple(s + sum(p) for s, p in zip(feature_map.shape[1:-1], pads))
    num_d = len(displacements)
    windows = [_pair_slices(d, spatial) for d in displacements]
    valid = np.zeros((num_d,) + spatial, dtype=bool)
    for i, (x_slices, _) in enumerate(windows):
        valid[(i,) + x_slices] = True
    pairs = valid.reshape(num_d, -1).sum(axis=1) * batch  # static n per d
    max_bins = int(1 + np.ceil(np.log2(pairs.max())))
    chunk = max(1, min(channels, (4 * channels) // (_BYTES_PER_PAIR * num_d)))
    # The last chunk may overlap the one before it (starts stay in range).
    starts = np.minimum(np.arange(0, channels, chunk), channels - chunk)
    valid = ops.convert_to_tensor(valid[:, None, None])  # (D, 1, 1, *sp)
    static_bins = ops.convert_to_tensor(
        (1 + np.ceil(np.log2(pairs))).astype("float32")[:, None]
    )
    dump = num_d * chunk * max_bins * max_bins  # the cell of dropped pairs

    def channel_chunk(start):
        """Channels `start : start + chunk`, `(chunk, batch, *spatial)`."""
        xc = ops.slice(
            feature_map,
            [0] * (feature_map.ndim - 1) + [start],
            feature_map.shape[:-1] + (chunk,),
        )
        xc = ops.moveaxis(ops.cast(xc, "float32"), -1, 0)
        return ops.pad(xc, [(0, 0), (0, 0)] + list(pads))

    def neighbours(xc):
        """Stack of `x[p + d]` for each displacement (zeros outside)."""
        shifted = []
        for d in displacements:
            y = xc
            for axis, o in enumerate(d):
                if o:
                    y = ops.roll(y, -o, axis=axis + 2)
            shifted.append(y)
        return ops.stack(shifted)  # (D, chunk, batch, *spatial)

    def window_ranges(xc):
        """`(low, high)` of the X and of the Y samples, each `(D, chunk)`,
        from per-position extremes over the batch (one pass over `xc`)."""
        low, high = ops.min(xc, axis=1), ops.max(xc, axis=1)  # (chunk, *sp)
        axes = tuple(range(1, 1 + len(spatial)))
        ranges = [
            ops.stack([
                ops.stack([ops.min(low[(slice(None),) + s], axis=axes)
                           for s in (x_slices, y_slices)]),
                ops.stack([ops.max(high[(slice(None),) + s], axis=axes)
                           for s in (x_slices, y_slices)]),
            ])
            for x_slices, y_slices in windows
        ]  # D x (2: low/high, 2: X/Y, chunk)
        return ops.moveaxis(ops.stack(ranges), 0, 2)  # (2, 2, D, chunk)

    def masked_ranges(xs, ys, keep):
        """As `window_ranges`, over the pairs in `keep` (value-dependent)."""
        flat = (num_d, chunk, -1)
        xs, ys, keep = (ops.reshape(ops.broadcast_to(t, keep.shape), flat)
                        for t in (xs, ys, keep))
        low = [ops.min(ops.where(keep, t, np.inf), axis=-1) for t in (xs, ys)]
        high = [ops.max(ops.where(keep, t, -np.inf), axis=-1) for t in (xs, ys)]
        return ops.stack([ops.stack(low), ops.stack(high)])

    def cells(xc):
        """Histogram cell of every pair (`dump` for the pairs not kept),
        the number of pairs kept, `(D, chunk)`, and whether each channel
        is finite, `(chunk,)` (a non-finite channel's cells are garbage,
        but within range)."""
        finite_channel = ops.all(
            ops.reshape(ops.isfinite(xc), (chunk, -1)), axis=1
        )
        ys = neighbours(xc)
        if diagonal_removal:
            keep = ops.logical_and(
                valid, ops.logical_and(ops.not_equal(xc, 0), ops.not_equal(ys, 0))
            )
            ranges = masked_ranges(xc[None], ys, keep)
            count = ops.sum(ops.cast(ops.reshape(keep, (num_d, chunk, -1)), "float32"), axis=-1)
            bins = 1.0 + ops.ceil(ops.log2(ops.maximum(count, 1.0)))
        else:
            keep, ranges = valid, window_ranges(xc)
            count = ops.broadcast_to(ops.convert_to_tensor(pairs[:, None], "float32"), (num_d, chunk))
            bins = ops.broadcast_to(static_bins, (num_d, chunk))
        # (2: low/high, 2: X/Y, D, chunk, 1 for batch, 1 per spatial axis)
        ranges = ops.reshape(ranges, tuple(ranges.shape) + (1,) * (1 + len(spatial)))
        ix = _bin_index(xc[None], ranges[0, 0], ranges[1, 0], bins)
        iy = _bin_index(ys, ranges[0, 1], ranges[1, 1], bins)
        if diagonal_removal:
            keep = ops.logical_and(keep, ops.not_equal(ix, iy))
        offset = ops.arange(num_d * chunk, dtype="int32") * max_bins**2
        offset = ops.reshape(offset, (num_d, chunk) + (1,) * (1 + len(spatial)))
        ids = ops.where(keep, ix * max_bins + iy + offset, dump)
        return ops.reshape(ids, (-1,)), count, finite_channel

    def dependence(counts, count):
        """`D` from the joint histograms `(D, chunk, bins, bins)`."""
        h_xy = _entropy(counts, axis=(2, 3))
        h_x = _entropy(ops.sum(counts, axis=3), axis=2)
        h_y = _entropy(ops.sum(counts, axis=2), axis=2)
        nmi = (h_x + h_y - h_xy) / h_xy
        d = k * nmi / ((k - 1.0) * nmi + 1.0)
        if diagonal_removal:  # the authors' rule: no pairs or NaN -> 0
            d = ops.where(ops.logical_or(ops.isnan(d), count == 0), 0.0, d)
        return d  # (D, chunk)

    cells, dependence = _fused(cells), _fused(dependence)

    def chunk_dependence(start):
        """`D` of a chunk's channels, NaN for those holding a non-finite
        value and `_NO_PAIR` for those whose histogram is empty (diagonal
        removal left no pair)."""
        ids, count, finite_channel = cells(channel_chunk(start))
        counts = _count(ids, dump + 1)[:-1]
        counts = ops.reshape(counts, (num_d, chunk, max_bins, max_bins))
        d = dependence(counts, count)
        d = ops.where(ops.sum(counts, axis=(2, 3)) == 0, _NO_PAIR, d)
        return ops.where(finite_channel[None, :], d, np.nan)

    d = ops.map(chunk_dependence, ops.convert_to_tensor(starts, "int32"))
    d = ops.reshape(ops.moveaxis(d, 1, 0), (num_d, -1))  # (D, chunks * chunk)
    # Each channel from the first chunk that holds it.
    first = np.searchsorted(starts, np.arange(channels), side="right") - 1
    return ops.take(d, first * chunk + np.arange(channels) - starts[first], axis=1)


def _mean_over_channels(d):
    """The mean of `D` `(displacements, channels)` over the channels that
    give an estimate: NaN (non-finite or constant) channels are left out,
    `_NO_PAIR` ones count as 0 (the authors' rule), and a displacement with
    no channel giving an estimate is NaN."""
    estimated = ops.greater_equal(d, 0.0)  # False for NaN and _NO_PAIR
    defined = ops.any(estimated, axis=1)
    mean = _nanmean(ops.where(ops.equal(d, _NO_PAIR), 0.0, d), axis=1)
    return ops.where(defined, mean, np.nan)


def _pair_slices(displacement, spatial):
    """Static slices of the positions `p` whose neighbour `p + d` is inside
    the map, and of those neighbours."""
    x_slices = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(displacement, spatial))
    y_slices = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(displacement, spatial))
    return x_slices, y_slices


def _fused(fn):
    """`fn` compiled with XLA on TensorFlow, which fuses its elementwise
    passes into one loop (about 3x faster on CPU); JAX compiles the whole
    estimator already."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def _count(ids, length):
    """float32 counts of the ints `ids` in `[0, length)`.

    `bincount` is the fast kernel on TensorFlow (about 20x faster than its
    scatter-based `unsorted_segment_sum` on CPU) and PyTorch; under
    `jax.jit` it needs a static length, which `segment_sum` has.
    """
    if keras.backend.backend() == "jax":
        ones = ops.ones_like(ids, dtype="float32")
        return ops.segment_sum(ones, ids, num_segments=length)
    return ops.cast(ops.bincount(ids, minlength=length), "float32")


def _bin_index(values, low, high, bins):
    """`floor((v - low) * B / (high - low + 1e-12))`, `high` in bin B - 1;
    0 where that is NaN (non-finite input)."""
    bins = ops.reshape(bins, low.shape)
    index = ops.floor((values - low) * (bins / (high - low + 1e-12)))
    index = ops.where(index > 0.0, index, 0.0)  # NaN fails the test
    return ops.cast(ops.minimum(index, bins - 1.0), "int32")


def _entropy(counts, axis):
    """Shannon entropy in bits of the histograms `counts` along `axis`.

    In float32, `log(p)` for a cell holding almost every sample (a nearly
    dead ReLU channel: `p = 1 - 1e-5`) is off by about 1%, which makes the
    mutual information of such a channel off by 1e-3 instead of 1e-7. For
    `p > 1/2` it is taken as `log1p((c - n) / n)`, where `c - n` is exact.
    """
    total = ops.sum(counts, axis=axis, keepdims=True)
    n = ops.maximum(total, 1.0)
    p = counts / n
    log_p = ops.where(
        p > 0.5,
        ops.log1p((counts - total) / n),
        ops.log(ops.where(counts > 0, p, 1.0)),
    )
    return -ops.sum(p * log_p, axis=axis) / math.log(2.0)

"""The SGS-MI estimator: spatial dependence of a feature map, in `keras.ops`.

For a conv layer's input feature map, `spatial_dependence` measures how much
information the pixel at each kernel offset carries about the centre pixel
(normalised mutual information from 2-D histograms, sharpened with `k`),
and `dependence_to_scaling` turns that into the layer's SGS mask. See
`docs/guide.md`, "The method" (Detkov et al., ICLR 2023) for the rule; the
authors' code decides the details the paper leaves open.

How it is computed: `pair_plan` fixes, from the shapes alone, which pixels
pair up for each displacement, the bins and the chunking. The map is
transposed to `(channels, *spatial, batch)` and estimated a chunk of
channels at a time by small functions, each a step of the rule and each
tested against numpy: `padded_chunk`, `pairs`, `bin_ranges` (or
`kept_bin_ranges` with diagonal removal), `cell_ids`, `count_cells`,
`histograms`, `sharpened_nmi`, then `mean_over_channels`. Everything runs
in float32 whatever the input dtype, with no Python loop over channels or
pixels. The chunk step is compiled (`tf.function` with XLA / `jax.jit`;
eager on PyTorch) once per chunk shape, which the number of channels does
not change, so a network compiles a handful of shapes (on JAX, once per
map shape, the loop over chunks included); the cell ids of one chunk, its
largest temporary, are bounded by `_PAIRS_PER_CALL`.
"""

import dataclasses
import functools
import itertools
import math

import keras
import numpy as np
from keras import ops

from keras_sgs._checks import check_number
from keras_sgs._checks import check_size

PADDINGS = ("same", "valid", "causal")
# Pairs (displacements x batch x pixels x channels) per call of the
# compiled estimator: their histogram cell ids, 4 bytes each, are its
# largest temporary. The fastest on CPU (benchmarks/mi_refresh.py):
# TensorFlow's `DenseBincount` counts on every core and gains from large
# calls; XLA's scatter (JAX) counts on one, within the cache.
_PAIRS_PER_CALL = {"tensorflow": 2**25, "jax": 2**20, "torch": 2**22}
# Copies of each histogram (see `cell_ids`).
_COPIES = 4
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
    0/0; constant on the layer's own input, before padding, since the zero
    border around a constant non-zero channel would make a dependence of
    the border alone, where the authors' code pads first), mirrored
    (`D[-o] = D[o]`) and set to 1 at the centre. Unlike the authors' code,
    a dilated kernel's neighbours are `dilation_rate * o` pixels away, and
    maps of 1-D and 3-D convolutions are supported.

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
    kernel_size = check_size("kernel_size", kernel_size, range(rank, rank + 1))
    dilation_rate = check_size(
        "dilation_rate", dilation_rate, range(rank, rank + 1)
    )
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
    k = check_number("k", k, minimum=0, exclusive=True)
    # Histograms have no gradient; a PyTorch map may require one.
    feature_map = ops.stop_gradient(ops.convert_to_tensor(feature_map))
    dependence = _compiled_map_dependence(
        shape,
        str(feature_map.dtype),
        kernel_size,
        padding,
        dilation_rate,
        float(k),
        bool(diagonal_removal),
    )
    return dependence(feature_map)


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


@dataclasses.dataclass(frozen=True, eq=False)
class PairPlan:
    """What is static about the pairs of one map shape and kernel window.

    Built with numpy from the shapes alone (`pair_plan`); the estimator's
    functions read it while they are traced. Each pair of opposite window
    offsets `{o, -o}` is one displacement `d` (the lexicographically
    positive one, times the dilation): every pixel `X` of the padded map
    whose neighbour `Y` at `+d` is inside the padded map makes one pair.

    Attributes:
        window_displacement: int array of the kernel's shape: the index of
            each window position's displacement, `num_displacements` at the
            centre.
        displacements: `(num_displacements, rank)` ints.
        pads: `(before, after)` zero padding per spatial axis, as the layer
            pads its input.
        x_slices: per displacement, the slices of the padded spatial axes
            holding the pixels `X` that have a neighbour.
        y_slices: per displacement, the slices holding their neighbours `Y`.
        windows: `(2, num_displacements, *padded)` bool: `x_slices` (index
            0) and `y_slices` (index 1) as masks.
        num_pairs: `(num_displacements,)` pairs per channel, batch included.
        bins: `(num_displacements,)` float32, bins per histogram axis
            `1 + ceil(log2(num_pairs))` (Sturges).
        max_bins: the largest of `bins`: the histograms' static size.
        chunk: channels estimated together in one call (a power of 2).
        chunk_starts: first channel of each chunk; the last chunk may
            overlap the one before it, so that every chunk is full.
    """

    window_displacement: np.ndarray
    displacements: np.ndarray
    pads: tuple
    x_slices: tuple
    y_slices: tuple
    windows: np.ndarray
    num_pairs: np.ndarray
    bins: np.ndarray
    max_bins: int
    chunk: int
    chunk_starts: np.ndarray

    def __post_init__(self):
        # Shared by every caller (`pair_plan` caches it): read-only.
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    @property
    def num_displacements(self):
        return len(self.displacements)

    @property
    def dropped_pair_cell(self):
        """The histogram cell id given to pairs that diagonal removal drops:
        one past the last cell of a displacement's histograms."""
        return self.chunk * self.max_bins**2 * _COPIES


@functools.lru_cache(maxsize=256)
def pair_plan(shape, kernel_size, padding, dilation_rate):
    """The `PairPlan` of a channels-last map `shape` (static ints).

    Args:
        shape: `(batch, *spatial, channels)` of the unpadded map.
        kernel_size: tuple of ints, one per spatial axis.
        padding: `"same"`, `"valid"` or `"causal"`.
        dilation_rate: tuple of ints, one per spatial axis.
    """
    batch, spatial, channels = shape[0], shape[1:-1], shape[-1]
    groups = {}
    for index in itertools.product(*(range(s) for s in kernel_size)):
        offset = tuple(
            (i - (s - 1) // 2) * r
            for i, s, r in zip(index, kernel_size, dilation_rate)
        )
        if any(offset):
            key = max(offset, tuple(-o for o in offset))
            groups.setdefault(key, []).append(index)
    displacements = sorted(groups)
    window_displacement = np.full(kernel_size, len(displacements), "int32")
    for i, d in enumerate(displacements):
        for index in groups[d]:
            window_displacement[index] = i
    pads = []
    for s, r in zip(kernel_size, dilation_rate):
        total = (s - 1) * r if padding != "valid" else 0
        before = total if padding == "causal" else total // 2
        pads.append((before, total - before))
    padded = [n + sum(p) for n, p in zip(spatial, pads)]

    def window_slices(sign):
        """Per displacement, the slices of the positions `p` (sign -1) or
        `p + d` (sign +1) of the pairs."""
        return tuple(
            tuple(
                slice(max(0, sign * o), n - max(0, -sign * o))
                for o, n in zip(d, padded)
            )
            for d in displacements
        )

    x_slices, y_slices = window_slices(-1), window_slices(1)
    windows = np.zeros((2, len(displacements), *padded), bool)
    for i in range(len(displacements)):
        windows[(0, i) + x_slices[i]] = True
        windows[(1, i) + y_slices[i]] = True
    num_pairs = batch * windows[0].reshape(len(displacements), -1).sum(axis=1)
    bins = 1 + np.ceil(np.log2(num_pairs))
    # A power of 2 (few shapes to compile) within the budget, and no more
    # than a third of the channels estimated twice (the last chunk
    # overlaps the one before).
    budget = _PAIRS_PER_CALL.get(keras.backend.backend(), 2**22)
    largest = max(1, min(channels, budget // int(num_pairs.sum())))
    chunk = 2 ** (largest.bit_length() - 1)
    while 3 * -(-channels // chunk) * chunk > 4 * channels:
        chunk //= 2
    return PairPlan(
        window_displacement=window_displacement,
        displacements=np.array(displacements, "int32"),
        pads=tuple(pads),
        x_slices=x_slices,
        y_slices=y_slices,
        windows=windows,
        num_pairs=num_pairs,
        bins=bins.astype("float32"),
        max_bins=int(bins.max()),
        chunk=chunk,
        chunk_starts=np.minimum(
            np.arange(0, channels, chunk), channels - chunk
        ),
    )


def padded_chunk(chunk, plan):
    """A chunk of channels `(chunk, *spatial, batch)`, as float32 and
    zero-padded as the layer pads it."""
    chunk = ops.cast(chunk, "float32")
    return ops.pad(chunk, [(0, 0), *plan.pads, (0, 0)])


def pairs(x, plan, i):
    """`(X, Y)`: the pixels of the padded chunk `x` that have a neighbour
    at displacement `i`, and those neighbours, each `(chunk, *window, batch)`
    with `Y[p] = x[p + d]`."""
    every = (slice(None),)
    return x[every + plan.x_slices[i]], x[every + plan.y_slices[i]]


def finite_channels(finite):
    """`(chunk,)` bool: whether every value of a channel is finite, from
    `ops.isfinite` of the chunk."""
    return ops.all(ops.reshape(finite, (finite.shape[0], -1)), axis=1)


def varying_channels(chunk):
    """`(chunk,)` bool: whether a channel of the unpadded chunk takes more
    than one value (False for a constant or non-finite channel)."""
    flat = ops.reshape(ops.cast(chunk, "float32"), (chunk.shape[0], -1))
    return ops.greater(ops.max(flat, axis=1), ops.min(flat, axis=1))


def bin_ranges(x, plan):
    """`(low, high)` of the `X` (index 0) and `Y` (index 1) samples of every
    displacement and channel, each `(2, num_displacements, chunk)`, from
    per-position extremes over the batch (one pass over `x`)."""
    low, high = _min_max(x)  # (chunk, *padded)
    inside = plan.windows[:, :, None]  # (2, num_displacements, 1, *padded)
    axes = tuple(range(3, inside.ndim))
    return (
        ops.min(ops.where(inside, low, np.inf), axis=axes),
        ops.max(ops.where(inside, high, -np.inf), axis=axes),
    )


def _min_max(x):
    """The minimum and maximum of `x` along its last axis (one pass on
    PyTorch, which runs eagerly; XLA fuses the two reductions)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.aminmax(x, dim=-1)
    return ops.min(x, axis=-1), ops.max(x, axis=-1)


def kept_pairs(x_values, y_values):
    """Diagonal removal: the pairs where neither value is 0."""
    return ops.logical_and(
        ops.not_equal(x_values, 0), ops.not_equal(y_values, 0)
    )


def kept_bin_ranges(x, plan):
    """As `bin_ranges`, over the pairs that diagonal removal keeps, and
    their number `(num_displacements, chunk)`."""
    low, high, count = [], [], []
    for i in range(plan.num_displacements):
        x_values, y_values = pairs(x, plan, i)
        keep = kept_pairs(x_values, y_values)
        axes = tuple(range(1, keep.ndim))
        low.append(
            [
                ops.min(ops.where(keep, v, np.inf), axis=axes)
                for v in (x_values, y_values)
            ]
        )
        high.append(
            [
                ops.max(ops.where(keep, v, -np.inf), axis=axes)
                for v in (x_values, y_values)
            ]
        )
        count.append(ops.sum(ops.cast(keep, "float32"), axis=axes))

    def xy_first(values):
        return ops.moveaxis(ops.stack([ops.stack(v) for v in values]), 1, 0)

    return xy_first(low), xy_first(high), ops.stack(count)


def sturges_bins(num_pairs):
    """Bins per histogram axis for `num_pairs` pairs (at least 1 bin)."""
    return 1.0 + ops.ceil(ops.log2(ops.maximum(num_pairs, 1.0)))


def bin_index(values, low, scale, top):
    """`min(floor((v - low) * scale), top)` as int32, for finite `values`
    not below `low` (where the cast's truncation is the floor)."""
    if keras.backend.backend() == "torch":  # eager: in place, 2 passes
        import torch

        index = torch.sub(values, low).mul_(scale).to(torch.int32)
        return index.clamp_max_(top)
    return ops.minimum(ops.cast((values - low) * scale, "int32"), top)


def _cell(ix, iy, max_bins, offset):
    """`ix * max_bins * _COPIES + iy * _COPIES + offset` (in place on
    PyTorch, which runs eagerly; XLA fuses the generic form)."""
    if keras.backend.backend() == "torch":
        iy = iy.mul_(_COPIES)
        return ix.mul_(max_bins * _COPIES).add_(iy).add_(offset)
    return ix * (max_bins * _COPIES) + iy * _COPIES + offset


def cell_ids(x, plan, low, high, bins, diagonal_removal):
    """The histogram cell of every pair of the padded chunk `x` (finite
    values): one int32 tensor `(chunk, *window, batch)` per displacement
    (flattening them here would cost XLA a copy).

    A value `v` of a sample with range `(low, high)` is in bin
    `floor((v - low) * B / (high - low + 1e-12))`, `high` in bin `B - 1`.
    A displacement's histograms are laid end to end, `(chunk, max_bins,
    max_bins, _COPIES)`: each is kept in `_COPIES` copies, the example
    choosing the copy, so that runs of pairs in one cell (a ReLU map's
    zeros) do not make every count wait for the one before. With diagonal
    removal the pairs dropped (a zero, or both values in the same bin) go
    to `plan.dropped_pair_cell`.
    """
    chunk, max_bins = x.shape[0], plan.max_bins
    per_channel = (plan.num_displacements, chunk) + (1,) * (x.ndim - 1)
    bins = ops.convert_to_tensor(bins, "float32")
    scale = ops.reshape(bins / (high - low + 1e-12), (2,) + per_channel)
    low = ops.reshape(low, (2,) + per_channel)
    top = ops.unstack(ops.reshape(ops.cast(bins, "int32") - 1, per_channel))
    (x_low, y_low), (x_scale, y_scale) = (
        [ops.unstack(t) for t in ops.unstack(v)] for v in (low, scale)
    )
    # Where each channel's histograms start, plus each example's copy.
    channel = np.arange(chunk, dtype="int32") * max_bins**2 * _COPIES
    copy = np.arange(x.shape[-1], dtype="int32") % _COPIES
    offset = ops.convert_to_tensor(np.reshape(channel, per_channel[1:]) + copy)
    ids = []
    for i in range(plan.num_displacements):
        x_values, y_values = pairs(x, plan, i)
        ix = bin_index(x_values, x_low[i], x_scale[i], top[i])
        iy = bin_index(y_values, y_low[i], y_scale[i], top[i])
        if diagonal_removal:  # before `_cell`, which may reuse `ix`, `iy`
            keep = ops.logical_and(
                kept_pairs(x_values, y_values), ops.not_equal(ix, iy)
            )
        cell = _cell(ix, iy, max_bins, offset)
        if diagonal_removal:
            cell = ops.where(keep, cell, plan.dropped_pair_cell)
        ids.append(cell)
    return ids


def count_cells(ids, plan):
    """How many pairs each cell holds: one flat float32 tensor per
    displacement, from `cell_ids`."""
    size = plan.dropped_pair_cell + 1
    return [_count(ops.reshape(cells, (-1,)), size) for cells in ids]


def histograms(counts, plan):
    """The joint histograms `(num_displacements, chunk, max_bins,
    max_bins)` from `count_cells`: the copies summed, the dropped pairs'
    cell left out."""
    counts = ops.stack(counts)[:, :-1]
    shape = (plan.num_displacements, plan.chunk, plan.max_bins, plan.max_bins)
    return ops.sum(ops.reshape(counts, shape + (_COPIES,)), axis=-1)


def sharpened_nmi(histograms, k):
    """`D = k * NMI / ((k - 1) * NMI + 1)` of joint histograms `(..., bins,
    bins)`, with `NMI = (H_X + H_Y - H_XY) / H_XY` (NaN where `H_XY = 0`).

    The joint histogram and both marginals are laid side by side, so that
    their entropies take one pass of logarithms (each `log` is a sizeable
    piece of compiled code)."""
    bins = histograms.shape[-1]
    joint = ops.reshape(histograms, histograms.shape[:-2] + (bins * bins,))
    cells = ops.concatenate(
        [joint, ops.sum(histograms, axis=-1), ops.sum(histograms, axis=-2)],
        axis=-1,
    )
    terms = _entropy_terms(cells, ops.sum(joint, axis=-1, keepdims=True))
    h_xy, h_x, h_y = (
        ops.sum(t, axis=-1)
        for t in ops.split(terms, [bins * bins, bins * (bins + 1)], axis=-1)
    )
    nmi = (h_x + h_y - h_xy) / h_xy
    return k * nmi / ((k - 1.0) * nmi + 1.0)


def mean_over_channels(d):
    """The mean of `D` `(displacements, channels)` over the channels that
    give an estimate: NaN (non-finite or constant) channels are left out,
    `_NO_PAIR` ones count as 0 (the authors' rule), and a displacement with
    no channel giving an estimate is NaN."""
    estimated = ops.greater_equal(d, 0.0)  # False for NaN and _NO_PAIR
    d = ops.where(ops.equal(d, _NO_PAIR), 0.0, d)
    finite = ops.logical_not(ops.isnan(d))
    total = ops.sum(ops.where(finite, d, 0.0), axis=1)
    mean = total / ops.sum(ops.cast(finite, "float32"), axis=1)
    return ops.where(ops.any(estimated, axis=1), mean, np.nan)


def _chunk_dependence(plan, k, diagonal_removal):
    """`D` of a chunk as three steps, `(cells, count_cells, dependence)`,
    compiled apart on TensorFlow, where `DenseBincount` has no XLA
    kernel."""

    def cells(chunk):
        x = padded_chunk(chunk, plan)
        finite = ops.isfinite(x)
        x = ops.where(finite, x, 0.0)  # those channels give NaN
        finite = finite_channels(finite)
        # Constant on the layer's own input: treated as a constant map, as
        # zero padding around a constant non-zero channel would otherwise
        # make a dependence of the border alone.
        varying = varying_channels(chunk)
        if diagonal_removal:
            low, high, count = kept_bin_ranges(x, plan)
            bins = sturges_bins(count)
        else:
            low, high = bin_ranges(x, plan)
            bins = np.repeat(plan.bins[:, None], plan.chunk, axis=1)
        ids = cell_ids(x, plan, low, high, bins, diagonal_removal)
        return ids, (finite, varying)

    def dependence(counts, channels):
        """NaN for a channel holding a non-finite value, or (0 with
        diagonal removal) constant on the unpadded input or giving a
        constant histogram; `_NO_PAIR` where diagonal removal leaves no
        pair."""
        finite, varying = channels
        joint = histograms(counts, plan)
        d = ops.where(varying[None, :], sharpened_nmi(joint, k), np.nan)
        if diagonal_removal:  # the authors' rule: NaN -> 0
            d = ops.where(ops.isnan(d), 0.0, d)
        d = ops.where(ops.sum(joint, axis=(2, 3)) == 0, _NO_PAIR, d)
        return ops.where(finite[None, :], d, np.nan)

    return cells, lambda ids: count_cells(ids, plan), dependence


@functools.lru_cache(maxsize=256)
def _compiled_chunk_dependence(
    chunk_shape,
    dtype,
    kernel_size,
    padding,
    dilation_rate,
    k,
    diagonal_removal,
):
    """`D` `(num_displacements, chunk)` of a chunk of channels `(chunk,
    *spatial, batch)`, compiled once per chunk shape and configuration
    (whatever the map's number of channels; on JAX as part of the map's
    function): NaN for a channel holding a
    non-finite value or giving a constant histogram, `_NO_PAIR` where
    diagonal removal leaves no pair (see `_chunk_dependence`)."""
    del dtype  # part of the cache key only
    chunk, *spatial, batch = chunk_shape
    plan = pair_plan(
        (batch, *spatial, chunk), kernel_size, padding, dilation_rate
    )
    cells, count_cells, dependence = _chunk_dependence(
        plan, k, diagonal_removal
    )
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # XLA fuses the passes over the pairs (about 5x faster than a
        # graph); on the small histograms a graph is as fast as XLA and
        # builds in a tenth of the time. (`partial`: TensorFlow counts the
        # traces of functions sharing a code object together, and would
        # warn about "retracing" when each shape traces once.)
        cells = tf.function(
            functools.partial(cells), jit_compile=True, autograph=False
        )
        dependence = tf.function(functools.partial(dependence), autograph=False)

    def estimate(chunk):
        ids, channels = cells(chunk)
        return dependence(count_cells(ids), channels)

    if backend == "jax":
        import jax

        # Compiled as part of the map's function; a `jit` of its own still
        # pays: JAX then traces the chunk step once per chunk shape, not
        # once per map shape (MobileNetV2's first refresh 6.1 s, 6.2-6.8 s
        # without).
        return jax.jit(estimate)
    return estimate


@functools.lru_cache(maxsize=256)
def _compiled_map_dependence(
    shape, dtype, kernel_size, padding, dilation_rate, k, diagonal_removal
):
    """`D` in the kernel's shape of a channels-last map of `shape`: the map
    transposed to `(channels, *spatial, batch)`, estimated a chunk of
    channels at a time (`_compiled_chunk_dependence`), and the mean over
    the channels.

    On JAX, where every eager op compiles once per shape, the whole of it
    is one compiled function, the chunks a loop (`lax.map`) inside it; the
    small steps around the chunks, compiled one by one, took as long as the
    estimator on a network's first refresh. Elsewhere a Python loop calls
    the compiled chunk step.
    """
    plan = pair_plan(shape, kernel_size, padding, dilation_rate)
    rank = len(shape) - 2
    estimate = _compiled_chunk_dependence(
        (plan.chunk,) + shape[1:-1] + shape[:1],
        dtype,
        kernel_size,
        padding,
        dilation_rate,
        k,
        diagonal_removal,
    )
    # Column `i * chunk + j` of the chunks' estimates is channel
    # `starts[i] + j`; the last chunk may overlap the one before: each
    # channel's first estimate is kept.
    starts = plan.chunk_starts
    channel = (starts[:, None] + np.arange(plan.chunk)).ravel()
    kept = np.unique(channel, return_index=True)[1]

    def channels_first(feature_map):
        # Batch innermost: long, contiguous runs for every map size.
        return ops.transpose(feature_map, (rank + 1, *range(1, rank + 1), 0))

    def mean_in_kernel_shape(per_chunk):
        """`(num_chunks, num_displacements, chunk)` -> the kernel's shape."""
        d = ops.reshape(
            ops.transpose(per_chunk, (1, 0, 2)), (plan.num_displacements, -1)
        )
        mean = mean_over_channels(ops.take(d, kept, axis=1))
        return ops.take(
            ops.concatenate([mean, ops.ones((1,))]), plan.window_displacement
        )

    if keras.backend.backend() == "jax":
        import jax

        @jax.jit
        def dependence(feature_map):
            x = channels_first(feature_map)
            return mean_in_kernel_shape(
                jax.lax.map(
                    lambda start: estimate(
                        jax.lax.dynamic_slice_in_dim(x, start, plan.chunk)
                    ),
                    starts,
                )
            )

        return dependence

    def dependence(feature_map):
        x = channels_first(feature_map)
        # A chunk at a time: a slice is a copy.
        return mean_in_kernel_shape(
            ops.stack([estimate(x[s : s + plan.chunk]) for s in starts])
        )

    return dependence


def _count(ids, length):
    """float32 counts of the ints `ids` in `[0, length)`.

    TensorFlow's `DenseBincount` kernel counts in per-thread histograms
    (`ops.bincount` adds a pass for the maximum, and its scatter-based
    `unsorted_segment_sum` is about 20x slower on CPU); PyTorch's
    `bincount` on the int32 ids, its range check included, is 1.4-1.8x as
    fast as `index_add_` of ones (CPU, ReLU-like ids); under `jax.jit` the
    length must be static, which `segment_sum` has.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        empty = tf.zeros((0,), "float32")
        return tf.raw_ops.DenseBincount(input=ids, size=length, weights=empty)
    if backend == "jax":
        ones = ops.ones_like(ids, dtype="float32")
        return ops.segment_sum(ones, ids, num_segments=length)
    import torch

    return torch.bincount(ids, minlength=length).to(torch.float32)


def _entropy_terms(counts, total):
    """`-p * log2(p)` of each cell of histograms `counts` holding `total`
    samples (their entropy is the sum).

    In float32, `log(p)` for a cell holding almost every sample (a nearly
    dead ReLU channel: `p = 1 - 1e-5`) is off by about 1%, which makes the
    mutual information of such a channel off by 1e-3 instead of 1e-7. For
    `p > 1/2` it is taken as `log1p((c - n) / n)`, where `c - n` is exact.
    """
    n = ops.maximum(total, 1.0)
    p = counts / n
    log_p = ops.where(
        p > 0.5,
        ops.log1p((counts - total) / n),
        ops.log(ops.where(counts > 0, p, 1.0)),
    )
    return -p * log_p / math.log(2.0)

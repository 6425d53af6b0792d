"""The MI estimator against a per-channel numpy implementation of
method.md section 3 (float64, loops, the authors' conventions)."""

import itertools

import keras
import numpy as np
import pytest
from conftest import jax_only

import keras_sgs


def reference_nmik(x, y, k, diagonal_removal):
    """One channel, one displacement: the sharpened NMI, in float64; `None`
    when diagonal removal leaves the histogram empty."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if diagonal_removal:
        keep = (x != 0) & (y != 0)
        x, y = x[keep], y[keep]
        if len(x) == 0:
            return None
    bins = int(1 + np.ceil(np.log2(len(x))))

    def index(v):
        i = np.floor((v - v.min()) * bins / (v.max() + 1e-12 - v.min()))
        return np.minimum(i, bins - 1).astype(int)

    joint = np.zeros((bins, bins))
    np.add.at(joint, (index(x), index(y)), 1)
    if diagonal_removal:
        joint[np.arange(bins), np.arange(bins)] = 0
        if joint.sum() == 0:
            return None

    def entropy(c):
        c = c[c > 0]
        c = c / c.sum()
        return -np.sum(c * np.log2(c))

    h_xy = entropy(joint.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        nmi = (entropy(joint.sum(0)) + entropy(joint.sum(1)) - h_xy) / h_xy
        d = k * nmi / ((k - 1) * nmi + 1)
    if diagonal_removal and np.isnan(d):
        return 0.0
    return d


def reference_dependence(
    fmap,
    kernel_size,
    k=5.0,
    padding="same",
    dilation_rate=1,
    diagonal_removal=False,
):
    fmap = np.asarray(fmap, np.float64)
    rank = fmap.ndim - 2
    kernel_size = tuple(kernel_size)
    dilation = dilation_rate
    if isinstance(dilation, int):
        dilation = (dilation,) * rank
    pads = [(0, 0)]
    for s, r in zip(kernel_size, dilation):
        total = (s - 1) * r if padding != "valid" else 0
        left = total if padding == "causal" else total // 2
        pads.append((left, total - left))
    fmap = np.pad(fmap, pads + [(0, 0)])
    spatial = fmap.shape[1:-1]
    result = np.ones(kernel_size)
    for index in itertools.product(*(range(s) for s in kernel_size)):
        offset = [
            (i - (s - 1) // 2) * r
            for i, s, r in zip(index, kernel_size, dilation)
        ]
        if not any(offset):
            continue
        centre = (slice(None),) + tuple(
            slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, spatial)
        )
        neighbour = (slice(None),) + tuple(
            slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, spatial)
        )
        # A channel with a non-finite value is left out (NaN); one whose
        # histogram diagonal removal leaves empty counts as 0 (the
        # authors), unless no channel gives an estimate at all.
        values = [
            reference_nmik(
                fmap[centre + (c,)].ravel(),
                fmap[neighbour + (c,)].ravel(),
                k,
                diagonal_removal,
            )
            if np.all(np.isfinite(fmap[..., c]))
            else np.nan
            for c in range(fmap.shape[-1])
        ]
        if all(v is None or np.isnan(v) for v in values):
            result[index] = np.nan
        else:
            with np.errstate(invalid="ignore"):
                result[index] = np.nanmean(
                    [0.0 if v is None else v for v in values]
                )
    return result


def estimate(fmap, kernel_size, **kwargs):
    return keras.ops.convert_to_numpy(
        keras_sgs.spatial_dependence(
            keras.ops.convert_to_tensor(fmap), kernel_size, **kwargs
        )
    )


def test_real_cifar10_images(cifar10_train):
    images = cifar10_train[0][:64]
    for kwargs in [{}, {"diagonal_removal": True}, {"k": 2.0}]:
        expected = reference_dependence(images, (3, 3), **kwargs)
        np.testing.assert_allclose(
            estimate(images, (3, 3), **kwargs), expected, atol=1e-5
        )


def test_real_activations_of_a_trained_model(cifar10_train):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    relu = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(relu)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(images, labels, epochs=2, batch_size=32, verbose=0)
    fmap = keras.Model(inputs, relu).predict(images[:32], verbose=0)
    assert (fmap == 0).mean() > 0.2  # ReLU zeros
    for kwargs in [{}, {"diagonal_removal": True}]:
        np.testing.assert_allclose(
            estimate(fmap, (3, 3), **kwargs),
            reference_dependence(fmap, (3, 3), **kwargs),
            atol=1e-5,
        )


@pytest.mark.parametrize(
    "shape, kernel_size, kwargs",
    [
        ((4, 9, 9, 5), (3, 3), {}),
        ((4, 9, 9, 5), (5, 5), {"padding": "valid"}),
        ((4, 9, 9, 5), (3, 3), {"dilation_rate": 2}),
        ((4, 9, 9, 5), (2, 3), {}),
        ((3, 20, 4), (3,), {"padding": "causal"}),
        ((2, 5, 6, 7, 3), (3, 3, 3), {}),
        ((4, 9, 9, 5), (3, 3), {"diagonal_removal": True}),
        # Chunks of 16 channels, the last overlapping the one before.
        ((2, 6, 6, 70), (3, 3), {}),
    ],
)
def test_random_maps(shape, kernel_size, kwargs):
    fmap = np.random.default_rng(0).normal(size=shape).astype("float32")
    np.testing.assert_allclose(
        estimate(fmap, kernel_size, **kwargs),
        reference_dependence(fmap, kernel_size, **kwargs),
        atol=1e-5,
    )


def test_constant_and_zero_channels():
    rng = np.random.default_rng(1)
    fmap = rng.normal(size=(4, 8, 8, 4)).astype("float32")
    fmap[..., 1] = 0.0
    fmap[..., 2] = 3.5
    # The authors' estimate, but for the constant channel: constant on the
    # layer's input, it is left out as a constant map is (the authors pad
    # first and estimate the zero border around it).
    expected = reference_dependence(np.delete(fmap, 2, axis=-1), (3, 3))
    np.testing.assert_allclose(estimate(fmap, (3, 3)), expected, atol=1e-5)
    assert not np.allclose(expected, reference_dependence(fmap, (3, 3)))
    np.testing.assert_allclose(
        estimate(fmap, (3, 3), diagonal_removal=True),
        reference_dependence(fmap, (3, 3), diagonal_removal=True),
        atol=1e-5,
    )
    # Only constant channels: no estimate at all.
    d = estimate(np.zeros((2, 6, 6, 2), "float32"), (3, 3))
    assert np.isnan(d[0, 0]) and d[1, 1] == 1.0


def _relu_map(seed=2, shape=(4, 8, 8, 5)):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=shape), 0.0).astype("float32")


def _with(fmap, index, value):
    fmap = fmap.copy()
    fmap[index] = value
    return fmap


@pytest.mark.parametrize("diagonal_removal", [False, True])
@pytest.mark.parametrize(
    "fmap, defined",
    [
        (_with(_relu_map(), (0, 3, 3, 1), np.nan), True),  # one NaN pixel
        (_with(_relu_map(), (..., slice(0, 2)), np.inf), True),  # inf channels
        (np.full((4, 8, 8, 5), np.nan, "float32"), False),  # all NaN
        (np.zeros((4, 8, 8, 5), "float32"), False),  # dead layer
    ],
)
def test_non_finite_and_degenerate_maps(fmap, defined, diagonal_removal):
    """One rule on every backend: non-finite channels are left out, and a
    displacement that no channel estimates is NaN (undefined)."""
    expected = reference_dependence(
        fmap, (3, 3), diagonal_removal=diagonal_removal
    )
    d = estimate(fmap, (3, 3), diagonal_removal=diagonal_removal)
    np.testing.assert_allclose(d, expected, atol=1e-5)
    assert d[1, 1] == 1.0
    assert np.all(np.isfinite(d)) == defined
    if defined:  # the same as without the bad channels
        bad = ~np.isfinite(fmap).all(axis=(0, 1, 2))
        np.testing.assert_allclose(
            d,
            estimate(
                fmap[..., ~bad], (3, 3), diagonal_removal=diagonal_removal
            ),
            atol=1e-6,
        )


@pytest.mark.parametrize("diagonal_removal", [False, True])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_constant_images_give_no_estimate(padding, diagonal_removal):
    """Blank images (what a data-loading bug gives): every channel is
    constant on the layer's input, so no displacement has an estimate,
    with zero padding too, where the padded map is not constant (the
    authors' estimate there rests on the border alone: corners 0.02-0.04,
    centre 2.6-2.75 in the mask)."""
    fmap = np.full((4, 8, 8, 3), 0.5, "float32")
    d = estimate(
        fmap, (3, 3), padding=padding, diagonal_removal=diagonal_removal
    )
    assert d[1, 1] == 1.0 and np.isnan(np.delete(d.ravel(), 4)).all()
    if padding == "same" and not diagonal_removal:
        border = reference_dependence(fmap, (3, 3))
        assert np.isfinite(border).all()


def test_nearly_dead_relu_channels(cifar10_train):
    # A channel with a handful of non-zero values among ~300k pairs: one
    # histogram cell holds almost every sample, the entropies are ~1e-4
    # bits, and float32 `p * log2(p)` alone would be off by 3e-3 in `D`.
    images = cifar10_train[0][:, :, :, :2].copy()
    flat = images.reshape(-1, 2)
    for channel, alive in [(0, 3), (1, 40)]:
        dead = np.random.default_rng(channel).permutation(len(flat))[alive:]
        flat[dead, channel] = 0.0
    np.testing.assert_allclose(
        estimate(images, (3, 3)),
        reference_dependence(images, (3, 3)),
        atol=1e-5,
    )


def test_quantised_maps_with_ties():
    # Values on a coarse grid: many samples sit exactly on bin edges, where
    # float32 arithmetic may put a sample in the neighbouring bin.
    fmap = np.random.default_rng(2).integers(0, 7, (8, 16, 16, 6)) / 6.0
    fmap = fmap.astype("float32")
    difference = np.abs(
        estimate(fmap, (3, 3)) - reference_dependence(fmap, (3, 3))
    )
    assert difference.max() <= 1e-4, difference.max()


def test_input_dtype_and_symmetry(cifar10_train):
    images = cifar10_train[0][:16]
    d32 = estimate(images, (3, 3))
    d16 = estimate(images.astype("float16"), (3, 3))
    assert d16.dtype == np.float32
    np.testing.assert_allclose(
        d16, reference_dependence(images.astype("float16"), (3, 3)), atol=1e-5
    )
    np.testing.assert_allclose(d32, d32[::-1, ::-1])
    assert d32[1, 1] == 1.0


def test_dependence_to_scaling():
    d = np.array([[0.5, 1.0, 0.5]])
    s = keras.ops.convert_to_numpy(keras_sgs.dependence_to_scaling(d))
    np.testing.assert_allclose(s, [[0.75, 1.5, 0.75]])
    assert s.dtype == np.float32


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((4, 8), {}, "channels-last"),
        ((4, 8, 8, 3), {"kernel_size": (3,)}, "kernel_size"),
        ((4, 8, 8, 3), {"kernel_size": (3, 0)}, "kernel_size"),
        ((4, 8, 8, 3), {"padding": "causal"}, "padding='causal'"),
        ((4, 8, 8, 3), {"k": 0.0}, "k=0.0"),
        ((4, 8, 8, 3), {"dilation_rate": (1, 1, 1)}, "dilation_rate"),
        ((4, 8, 8, 3), {"kernel_size": 3.0}, "kernel_size=3.0"),
        ((4, 8, 8, 3), {"kernel_size": (1, 1)}, r"kernel_size=\(1, 1\)"),
        ((0, 8, 8, 3), {}, r"shape \(0, 8, 8, 3\)"),
        ((4, 8, 8, 0), {}, r"shape \(4, 8, 8, 0\)"),
        ((4, 1, 1, 3), {"padding": "valid"}, r"shape \(4, 1, 1, 3\)"),
        (
            (4, 4, 4, 3),
            {"padding": "valid", "dilation_rate": 2},
            "dilation_rate=\\(2, 2\\)",
        ),
        ((4, 8, 8, 3), {"k": True}, "k=True"),
    ],
)
def test_bad_input(shape, kwargs, match):
    kwargs = {"kernel_size": (3, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        keras_sgs.spatial_dependence(np.zeros(shape, "float32"), **kwargs)


def test_numpy_scalars_are_numbers():
    fmap = np.random.default_rng(5).normal(size=(2, 6, 6, 2)).astype("float32")
    expected = estimate(fmap, (3, 3), k=5.0)
    np.testing.assert_allclose(
        estimate(
            fmap, np.int64(3), k=np.float32(5.0), dilation_rate=np.int32(1)
        ),
        expected,
        atol=1e-6,
    )


# The estimator's steps (keras_sgs.mutual_info), each against numpy.

from keras_sgs import mutual_info  # noqa: E402


def _chunk_and_plan(
    shape=(3, 6, 5, 4),
    kernel_size=(3, 3),
    padding="same",
    dilation_rate=(1, 1),
    seed=0,
):
    """A ReLU map, its plan, and the map as one padded float32 chunk
    `(channels, *padded, batch)` (numpy) with the plan of that chunk."""
    fmap = _relu_map(seed, shape)
    plan = mutual_info.pair_plan(shape, kernel_size, padding, dilation_rate)
    padded = np.pad(fmap, [(0, 0), *plan.pads, (0, 0)])
    chunk = np.moveaxis(padded, [-1, 0], [0, -1])
    return fmap, plan, chunk


def _numpy_pairs(padded_chunk, plan, i):
    every = (slice(None),)
    return (
        padded_chunk[every + plan.x_slices[i]],
        padded_chunk[every + plan.y_slices[i]],
    )


def test_pair_plan():
    plan = mutual_info.pair_plan((2, 8, 8, 70), (3, 3), "same", (1, 1))
    np.testing.assert_array_equal(
        plan.displacements, [(0, 1), (1, -1), (1, 0), (1, 1)]
    )
    # Opposite offsets share a displacement; the centre is the last index.
    np.testing.assert_array_equal(
        plan.window_displacement, [[3, 2, 1], [0, 4, 0], [1, 2, 3]]
    )
    assert plan.pads == ((1, 1), (1, 1))
    np.testing.assert_array_equal(
        plan.num_pairs, [2 * 10 * 9, 2 * 9 * 9, 2 * 9 * 10, 2 * 9 * 9]
    )
    np.testing.assert_array_equal(
        plan.bins, 1 + np.ceil(np.log2(plan.num_pairs))
    )
    assert plan.max_bins == plan.bins.max()
    assert plan.windows.shape == (2, 4, 10, 10)
    np.testing.assert_array_equal(
        plan.windows.sum(axis=(2, 3)) * 2, [plan.num_pairs] * 2
    )
    # Chunks: a power of 2, every channel in one, at most a third twice.
    assert plan.chunk & (plan.chunk - 1) == 0
    covered = np.zeros(70, int)
    for start in plan.chunk_starts:
        covered[start : start + plan.chunk] += 1
    assert covered.min() == 1 and covered.sum() <= 70 * 4 / 3
    causal = mutual_info.pair_plan((2, 9, 3), (3,), "causal", (2,))
    assert causal.pads == ((4, 0),)
    np.testing.assert_array_equal(causal.displacements, [(2,)])


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_pairs_and_bin_ranges(padding):
    _, plan, chunk = _chunk_and_plan(padding=padding)
    x = keras.ops.convert_to_tensor(chunk)
    low, high = (
        keras.ops.convert_to_numpy(t) for t in mutual_info.bin_ranges(x, plan)
    )
    for i, d in enumerate(plan.displacements):
        xs, ys = (
            keras.ops.convert_to_numpy(t) for t in mutual_info.pairs(x, plan, i)
        )
        expected_x, expected_y = _numpy_pairs(chunk, plan, i)
        np.testing.assert_array_equal(xs, expected_x)
        np.testing.assert_array_equal(ys, expected_y)
        # Y is X's neighbour at +d in the padded map.
        np.testing.assert_array_equal(
            np.roll(chunk, -d, axis=(1, 2))[(slice(None),) + plan.x_slices[i]],
            expected_y,
        )
        for side, values in enumerate((expected_x, expected_y)):
            flat = values.reshape(len(values), -1)
            np.testing.assert_array_equal(low[side, i], flat.min(axis=1))
            np.testing.assert_array_equal(high[side, i], flat.max(axis=1))


def test_kept_bin_ranges():
    _, plan, chunk = _chunk_and_plan()
    low, high, count = (
        keras.ops.convert_to_numpy(t)
        for t in mutual_info.kept_bin_ranges(
            keras.ops.convert_to_tensor(chunk), plan
        )
    )
    for i in range(plan.num_displacements):
        xs, ys = _numpy_pairs(chunk, plan, i)
        for c in range(chunk.shape[0]):
            keep = (xs[c] != 0) & (ys[c] != 0)
            assert count[i, c] == keep.sum()
            for side, values in enumerate((xs[c], ys[c])):
                assert low[side, i, c] == values[keep].min()
                assert high[side, i, c] == values[keep].max()


@pytest.mark.parametrize("diagonal_removal", [False, True])
def test_cell_ids_and_histograms(diagonal_removal):
    """`cell_ids` -> `count_cells` -> `histograms` equal numpy's 2-D
    histogram of each (displacement, channel) with method.md's bins."""
    _, plan, chunk = _chunk_and_plan(shape=(3, 6, 5, 4))
    x = keras.ops.convert_to_tensor(chunk)
    if diagonal_removal:
        low, high, count = mutual_info.kept_bin_ranges(x, plan)
        bins = keras.ops.convert_to_numpy(mutual_info.sturges_bins(count))
    else:
        low, high = mutual_info.bin_ranges(x, plan)
        bins = np.repeat(plan.bins[:, None], plan.chunk, axis=1)
    ids = mutual_info.cell_ids(x, plan, low, high, bins, diagonal_removal)
    joint = keras.ops.convert_to_numpy(
        mutual_info.histograms(mutual_info.count_cells(ids, plan), plan)
    )
    assert (
        joint.shape
        == (plan.num_displacements, plan.chunk) + (plan.max_bins,) * 2
    )
    for i in range(plan.num_displacements):
        xs, ys = _numpy_pairs(chunk.astype(np.float64), plan, i)
        for c in range(plan.chunk):
            xv, yv = xs[c].ravel(), ys[c].ravel()
            if diagonal_removal:
                keep = (xv != 0) & (yv != 0)
                xv, yv = xv[keep], yv[keep]
            b = int(bins[i, c])

            def index(v):
                i = np.floor((v - v.min()) * b / (v.max() + 1e-12 - v.min()))
                return np.minimum(i, b - 1).astype(int)

            expected = np.zeros((plan.max_bins,) * 2)
            np.add.at(expected, (index(xv), index(yv)), 1)
            if diagonal_removal:
                expected[np.arange(b), np.arange(b)] = 0
            np.testing.assert_array_equal(joint[i, c], expected)


def test_sharpened_nmi():
    rng = np.random.default_rng(3)
    joint = rng.integers(0, 50, (3, 5, 6, 6)).astype("float32")
    joint[0, 0] = 0.0
    joint[0, 0, 2, 4] = 7.0  # one cell: H_XY = 0, NaN
    d = keras.ops.convert_to_numpy(
        mutual_info.sharpened_nmi(keras.ops.convert_to_tensor(joint), 2.0)
    )

    def entropy(c):
        p = c[c > 0] / c.sum()
        return -np.sum(p * np.log2(p))

    for i, c in np.ndindex(3, 5):
        h = joint[i, c].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            nmi = (
                entropy(h.sum(0)) + entropy(h.sum(1)) - entropy(h)
            ) / entropy(h)
            expected = 2 * nmi / (nmi + 1)
        np.testing.assert_allclose(d[i, c], expected, atol=1e-6)
    assert np.isnan(d[0, 0])


def test_mean_over_channels():
    no_pair = mutual_info._NO_PAIR
    d = np.array(
        [
            [0.2, 0.4, np.nan],  # NaN channels are left out
            [0.3, no_pair, np.nan],  # no pair counts as 0 (the authors)
            [np.nan, np.nan, np.nan],  # no channel: undefined
            [no_pair, no_pair, np.nan],  # no estimate at all: undefined
        ],
        "float32",
    )
    mean = keras.ops.convert_to_numpy(mutual_info.mean_over_channels(d))
    np.testing.assert_allclose(mean[:2], [0.3, 0.15], atol=1e-7)
    assert np.isnan(mean[2]) and np.isnan(mean[3])


def test_pair_plan_is_shared_read_only():
    plan = mutual_info.pair_plan((2, 8, 8, 3), (3, 3), "same", (1, 1))
    assert plan is mutual_info.pair_plan((2, 8, 8, 3), (3, 3), "same", (1, 1))
    with pytest.raises(ValueError, match="read-only"):
        plan.bins[0] = 1.0


@jax_only
def test_a_new_map_shape_compiles_one_program_on_jax(jax_compilations):
    """The whole map's estimate is one compiled function (its chunks a
    loop inside it): a network's first refresh compiles once per map shape,
    not once per small step around the chunks."""
    fmap = np.random.default_rng(0).normal(size=(4, 7, 9, 70))
    fmap = fmap.astype("float32")  # chunks of 16 channels, the last overlapping
    keras_sgs.spatial_dependence(fmap[:, :5], (3, 3))  # another shape first

    first = jax_compilations(lambda: keras_sgs.spatial_dependence(fmap, (3, 3)))
    # The estimate, and at most one trivial step putting the map on device.
    assert "dependence" in first and len(first) <= 2, first
    again = jax_compilations(
        lambda: keras_sgs.spatial_dependence(2 * fmap, (3, 3))
    )
    assert again == []

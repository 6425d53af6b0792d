import keras
import numpy as np
import pytest

import keras_sgs
from keras_sgs import csla_conv
from keras_sgs import mask_from_branches
from keras_sgs import mask_from_channel_branches
from keras_sgs.masks import fuse_csla_kernels
from keras_sgs.masks import kernel_mask
from keras_sgs.masks import mask_value
from keras_sgs.masks import spatial_mean


def _reference_mask(size, branches):
    """Pads each branch's support into the window by hand."""
    mask = np.zeros(size)
    for branch, a in branches:
        support = np.ones(branch)
        pad = [((k - b) // 2, (k - b) // 2) for b, k in zip(branch, size)]
        mask += a**2 * np.pad(support, pad)
    return mask


def test_acb_mask():
    mask = mask_from_branches(
        (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
    )
    np.testing.assert_array_equal(mask, [[1, 2, 1], [2, 3, 2], [1, 2, 1]])
    assert mask.dtype == np.float32


def test_authors_figure_and_scalars():
    # The figure in the authors' repository: 3x3 + 3x1 + 1x1.
    mask = mask_from_branches(
        (3, 3), [((3, 3), 1.0), ((3, 1), 1.0), ((1, 1), 1.0)]
    )
    np.testing.assert_array_equal(mask, [[1, 2, 1], [1, 3, 1], [1, 2, 1]])
    branches = [((5, 5), 0.5), ((1, 5), -2.0), ((3, 3), 1.5), ((1, 1), 3.0)]
    np.testing.assert_allclose(
        mask_from_branches((5, 5), branches),
        _reference_mask((5, 5), branches),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "size, branches",
    [
        ((3,), [((3,), 1.0), ((1,), 2.0)]),
        ((3, 3, 3), [((3, 3, 3), 1.0), ((1, 3, 1), 1.0)]),
    ],
)
def test_other_ranks(size, branches):
    np.testing.assert_allclose(
        mask_from_branches(size, branches), _reference_mask(size, branches)
    )


def test_normalize():
    mask = mask_from_branches(3, [((3,), 1.0), ((1,), 1.0)], normalize=True)
    np.testing.assert_allclose(mask, np.array([1, 2, 1]) / (4 / 3), rtol=1e-6)
    assert mask.mean() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=(3, 0), branches=[((1, 1), 1.0)]), "kernel_size"),
        (dict(kernel_size="3x3", branches=[((1, 1), 1.0)]), "kernel_size"),
        (dict(kernel_size=(3, 3), branches=[]), "at least one"),
        (dict(kernel_size=(3, 3), branches=[((5, 5), 1.0)]), r"\(5, 5\)"),
        (dict(kernel_size=(3, 3), branches=[((2, 2), 1.0)]), "even margin"),
        (dict(kernel_size=(3, 3), branches=[((3,), 1.0)]), "same rank"),
        (dict(kernel_size=(3, 3), branches=[(3, 3)]), "branch_kernel_size"),
        (dict(kernel_size=(3, 3), branches=[((3, 3),)]), "pair"),
        (dict(kernel_size=(3, 3), branches=[((3, 3), float("nan"))]), "finite"),
        (
            dict(kernel_size=(3, 3), branches=[((3, 3), 0.0)], normalize=True),
            "mean is 0",
        ),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_from_branches(**kwargs)


def test_branches_not_a_list():
    with pytest.raises(ValueError, match="branches"):
        mask_from_branches((3, 3), 1.0)


def test_mask_value_of_a_spatial_mask():
    out = mask_value(np.ones((3, 3)), (3, 3, 1, 1))
    assert out.shape == (3, 3, 1, 1) and out.dtype == np.float32
    with pytest.raises(
        ValueError, match=r"shape \(3, 3, 1, 1\) or its spatial.*\(3,\)"
    ):
        mask_value(np.ones(3), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        mask_value(-np.ones((3, 3)), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="finite"):
        mask_value(np.full((3, 3), np.inf), (3, 3, 1, 1))
    with pytest.raises(ValueError, match="array of numbers"):
        mask_value("ones", (3, 3, 1, 1))


# -- Per-output-channel masks (RepOptimizer) -------------------------------


def test_channel_branches_against_numpy():
    a = np.array([1.0, 0.5, 2.0, 0.0])
    b = np.array([0.3, 1.0, -1.0, 2.0])
    mask = mask_from_channel_branches((3, 3), [((3, 3), a), ((1, 1), b)])
    assert mask.shape == (3, 3, 1, 4) and mask.dtype == np.float32
    expected = np.ones((3, 3, 1, 4)) * a**2
    expected[1, 1, 0] += b**2
    np.testing.assert_allclose(mask, expected, rtol=1e-6)
    # Channel by channel it is the scalar mask of that channel's branches.
    branches = [((5, 5), [0.5, 1.0]), ((1, 5), 2.0), ((3, 3), [1.5, -1.0])]
    mask = mask_from_channel_branches((5, 5), branches)
    for c in range(2):
        scalars = [(size, np.broadcast_to(s, 2)[c]) for size, s in branches]
        np.testing.assert_allclose(
            mask[..., 0, c], _reference_mask((5, 5), scalars), rtol=1e-6
        )
    # Scalars only: one channel, equal to mask_from_branches.
    branches = [((3,), 1.0), ((1,), 2.0)]
    np.testing.assert_array_equal(
        mask_from_channel_branches(3, branches)[:, 0, 0],
        mask_from_branches(3, branches),
    )


@pytest.mark.parametrize(
    "branches, match",
    [
        ([], "at least one"),
        ([((3, 3), [1.0, 2.0]), ((1, 1), [1.0, 2.0, 3.0])], "same length"),
        ([((3, 3), np.ones((2, 2)))], "1-D array"),
        ([((3, 3), [1.0, np.nan])], "finite"),
        ([((2, 2), 1.0)], "even margin"),
        ([((3, 3),)], "pair"),
    ],
)
def test_channel_branches_bad_input(branches, match):
    with pytest.raises(ValueError, match=match):
        mask_from_channel_branches((3, 3), branches)


def _fused_reference(k3, k1, a, b, identity):
    """Loops over every output channel and input channel."""
    fused = np.zeros(k3.shape)
    for c in range(k3.shape[-1]):
        for d in range(k3.shape[-2]):
            fused[:, :, d, c] = a[c] * k3[:, :, d, c]
            fused[1, 1, d, c] += b[c] * k1[0, 0, d, c]
            if identity is not None and c == d:
                fused[1, 1, d, c] += identity[c]
    return fused


def test_fuse_csla_kernels_against_loops():
    rng = np.random.default_rng(0)
    k3, k1 = rng.normal(size=(3, 3, 4, 4)), rng.normal(size=(1, 1, 4, 4))
    a, b, s = rng.uniform(size=(3, 4))
    np.testing.assert_allclose(
        fuse_csla_kernels(k3, k1, a, b, identity=s),
        _fused_reference(k3, k1, a, b, s),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        fuse_csla_kernels(k3, k1, a, b),
        _fused_reference(k3, k1, a, b, None),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="in_channels=4, out_channels=5"):
        fuse_csla_kernels(
            np.ones((3, 3, 4, 5)), np.ones((1, 1, 4, 5)), 1.0, 1.0, 1.0
        )


def test_csla_conv_mask_and_fused_initial_kernel():
    a, b = np.array([1.0, 0.5, 2.0]), np.array([0.2, 1.0, 0.7])
    mask, kernel = csla_conv((3, 3), 3, 3, a, b, seed=4)
    assert mask.shape == (3, 3, 1, 3) and kernel.shape == (3, 3, 3, 3)
    assert mask.dtype == kernel.dtype == np.float32
    np.testing.assert_array_equal(
        mask, mask_from_channel_branches((3, 3), [((3, 3), a), ((1, 1), b)])
    )
    # The same draws by hand: glorot_uniform seeded with 4 and 5.
    k3 = keras.ops.convert_to_numpy(
        keras.initializers.GlorotUniform(seed=4)((3, 3, 3, 3))
    )
    k1 = keras.ops.convert_to_numpy(
        keras.initializers.GlorotUniform(seed=5)((1, 1, 3, 3))
    )
    np.testing.assert_allclose(
        kernel, _fused_reference(k3, k1, a, b, np.ones(3)), rtol=1e-6
    )
    # Identity scales; no identity when in != out; scalars broadcast.
    _, scaled = csla_conv((3, 3), 3, 3, a, b, identity=[0.0, 1.0, 2.0], seed=4)
    np.testing.assert_allclose(
        scaled, _fused_reference(k3, k1, a, b, [0.0, 1.0, 2.0]), rtol=1e-6
    )
    mask, kernel = csla_conv((3, 3), 3, 5, 1.0, 0.5, seed=1)
    assert mask.shape == (3, 3, 1, 5) and kernel.shape == (3, 3, 3, 5)
    np.testing.assert_allclose(mask[1, 1], 1.25)
    _, no_identity = csla_conv((3, 3), 3, 3, a, b, identity=False, seed=4)
    np.testing.assert_allclose(
        no_identity, _fused_reference(k3, k1, a, b, None), rtol=1e-6
    )


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((3, 3), 4, 5, 1.0, 1.0), dict(identity=0.5), "in_channels=4"),
        (((3, 3), 4, 4, [1.0, 2.0], 1.0), {}, "scale_3x3 of length 2"),
        (((3, 3), 4, 4, 1.0, np.ones(3)), {}, "scale_1x1 of length 3"),
        (((3, 3), 4, 4, 1.0, 1.0), dict(identity=[1.0]), "identity of len"),
        (((2, 2), 4, 4, 1.0, 1.0), {}, "odd"),
        (((3, 3), 0, 4, 1.0, 1.0), {}, "in_channels=0"),
        (((3, 3), 4, 4, "a", 1.0), {}, "scale_3x3='a'"),
    ],
)
def test_csla_conv_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        csla_conv(*args, **kwargs)


def test_kernel_mask_and_mask_value():
    kernel = (3, 3, 4, 8)
    assert kernel_mask(np.ones((3, 3)), kernel).shape == (3, 3, 1, 1)
    for shape in [(3, 3, 1, 1), (3, 3, 1, 8), (3, 3, 4, 1), kernel]:
        assert kernel_mask(np.ones(shape), kernel).shape == shape
    for shape in [(3, 3, 1, 4), (3, 3, 8), (1, 3, 3, 1, 1), (3,)]:
        with pytest.raises(ValueError, match=rf"{kernel}.*{shape}"):
            kernel_mask(np.ones(shape), kernel)
    with pytest.raises(ValueError, match="non-negative"):
        kernel_mask(-np.ones((3, 3, 1, 8)), kernel)
    spatial = np.arange(9.0).reshape(3, 3)
    for value in (spatial, spatial[..., None, None]):
        np.testing.assert_array_equal(
            mask_value(value, (3, 3, 1, 8)),
            np.repeat(spatial[..., None, None], 8, axis=-1),
        )
    assert mask_value(np.ones((3, 3, 1, 8)), (3, 3, 1, 8)).shape == (
        3,
        3,
        1,
        8,
    )
    with pytest.raises(ValueError, match=r"\(3, 3, 1, 8\).*\(3, 3, 1, 4\)"):
        mask_value(np.ones((3, 3, 1, 4)), (3, 3, 1, 8))
    np.testing.assert_allclose(
        spatial_mean(np.stack([spatial, 3 * spatial], -1)[:, :, None]),
        2 * spatial,
    )


def test_exported():
    assert keras_sgs.csla_conv is csla_conv
    assert keras_sgs.mask_from_channel_branches is mask_from_channel_branches

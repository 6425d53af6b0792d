import numpy as np
import pytest

from keras_sgs import mask_from_branches
from keras_sgs.masks import validate_mask


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
    with pytest.raises(TypeError, match="branches"):
        mask_from_branches((3, 3), 1.0)


def test_validate_mask():
    out = validate_mask(np.ones((3, 3)), (3, 3))
    assert out.shape == (3, 3, 1, 1) and out.dtype == np.float32
    assert validate_mask(np.ones((3, 3, 1, 1)), (3, 3)).shape == (3, 3, 1, 1)
    with pytest.raises(
        ValueError, match=r"shape \(3, 3\) or \(3, 3, 1, 1\).*\(3,\)"
    ):
        validate_mask(np.ones(3), (3, 3))
    with pytest.raises(ValueError, match="non-negative"):
        validate_mask(-np.ones((3, 3)), (3, 3))
    with pytest.raises(ValueError, match="finite"):
        validate_mask(np.full((3, 3), np.inf), (3, 3))
    with pytest.raises(TypeError, match="array of numbers"):
        validate_mask("ones", (3, 3))

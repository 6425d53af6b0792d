"""The argument checks every public function uses: Keras's ValueError
policy, numpy scalars as numbers, bools refused."""

import numpy as np
import pytest

import keras_sgs
from keras_sgs._checks import check_int
from keras_sgs._checks import check_number
from keras_sgs._checks import check_size


def test_check_int():
    assert check_int("n", np.int64(3), minimum=1) == 3
    assert type(check_int("n", np.int32(0), minimum=0)) is int
    assert check_int("k", 5, minimum=1, odd=True) == 5
    for value, message in [
        (True, "`n` must be a positive int. Received: n=True"),
        (0, "`n` must be a positive int. Received: n=0"),
        (2.0, "`n` must be a positive int. Received: n=2.0"),
        ("3", "`n` must be a positive int. Received: n='3'"),
    ]:
        with pytest.raises(ValueError) as error:
            check_int("n", value, minimum=1)
        assert str(error.value) == message
    with pytest.raises(ValueError, match="an int >= 0. Received: w=-1"):
        check_int("w", -1, minimum=0)
    with pytest.raises(ValueError, match="an odd positive int. Received: k=4"):
        check_int("k", 4, minimum=1, odd=True)


def test_check_number():
    assert check_number("k", np.float32(2.5), minimum=0, exclusive=True) == 2.5
    assert check_number("wd", 0, minimum=0) == 0.0
    assert check_number("x", np.int64(-3)) == -3.0
    for value in (0, -1.0, float("nan"), float("inf"), True, "1", None):
        with pytest.raises(ValueError, match=f"Received: k={value!r}"):
            check_number("k", value, minimum=0, exclusive=True)
    with pytest.raises(ValueError, match="a finite number >= 0"):
        check_number("wd", -1e-4, minimum=0)


def test_check_size():
    assert check_size("s", 3, range(2, 3)) == (3, 3)
    assert check_size("s", 3, range(1, 4)) == (3,)
    assert check_size("s", (np.int64(1), 3), range(1, 4)) == (1, 3)
    for value in ((3, 0), (3, True), (1, 2, 3, 4), 0, "33", 2.0):
        with pytest.raises(ValueError, match="1 to 3 positive ints"):
            check_size("s", value, range(1, 4))
    with pytest.raises(ValueError, match=r"a tuple of 2 positive ints"):
        check_size("s", (3, 3, 3), range(2, 3))


def test_public_functions_take_numpy_ints_and_refuse_bools():
    """`build_model(num_classes=True)` was accepted and `np.int64(10)`
    refused, before one check served every function."""
    model = keras_sgs.models.build_model("vgg11", np.int64(10), width=0.125)
    assert model.output_shape == (None, 10)
    with pytest.raises(ValueError, match="num_classes=True"):
        keras_sgs.models.build_model("vgg11", True)
    with pytest.raises(ValueError, match="filters=True"):
        keras_sgs.reparam.ACBlock(True, 3)
    mask, _ = keras_sgs.csla_conv((3, 3), np.int64(2), np.int32(2), 1.0, 1.0)
    assert mask.shape == (3, 3, 1, 2)
    with pytest.raises(ValueError, match="in_channels=False"):
        keras_sgs.csla_conv((3, 3), False, 2, 1.0, 1.0)

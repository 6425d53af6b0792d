"""The suite's warning policy ([tool.pytest.ini_options] filterwarnings in
pyproject.toml): a warning raised from keras_sgs's own code fails the test
that raised it, whatever its category."""

import warnings

import pytest

from keras_sgs import masks


@pytest.mark.parametrize("category", [DeprecationWarning, UserWarning])
def test_a_warning_from_keras_sgs_fails_the_test(category):
    with pytest.raises(category, match="raised in keras_sgs.masks"):
        warnings.warn_explicit(
            "raised in keras_sgs.masks",
            category,
            filename=masks.__file__,
            lineno=1,
            module="keras_sgs.masks",
        )

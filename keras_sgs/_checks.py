"""Argument checks of the public functions, with Keras's policy: a bad
argument raises a `ValueError` that names it and shows the received value.

Numpy scalars count as numbers (`np.int64(10)` is an int); bools do not
(`True` is not a count of classes).
"""

import math
import numbers


def is_int(value):
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """A Python or numpy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, minimum=None, odd=False):
    """Returns `value` as an int.

    Args:
        name: str. The argument's name, for the message.
        value: the received value: a Python or numpy integer, not a bool.
        minimum: int or `None`. The smallest value allowed.
        odd: bool. Whether the value must be odd.

    Raises:
        ValueError: `value` is not such an int.
    """
    if (
        not is_int(value)
        or (minimum is not None and value < minimum)
        or (odd and value % 2 == 0)
    ):
        kind = "an int"
        if minimum == 1:
            kind = "a positive int"
        elif minimum is not None:
            kind = f"an int >= {minimum}"
        if odd:
            kind = "an odd " + kind.split(" ", 1)[1]
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)


def check_number(name, value, minimum=None, exclusive=False):
    """Returns `value` as a float.

    Args:
        name: str. The argument's name, for the message.
        value: the received value: a finite Python or numpy real, not a
            bool.
        minimum: number or `None`. The bound below.
        exclusive: bool. Whether `value` must exceed `minimum` (or may
            equal it).

    Raises:
        ValueError: `value` is not such a number.
    """
    if (
        not is_real(value)
        or not math.isfinite(value)
        or (minimum is not None and value < minimum)
        or (exclusive and value == minimum)
    ):
        bound = ""
        if minimum is not None:
            bound = f" {'>' if exclusive else '>='} {minimum}"
        raise ValueError(
            f"`{name}` must be a finite number{bound}. Received: "
            f"{name}={value!r}"
        )
    return float(value)


def check_size(name, value, ranks):
    """Returns `value`, a positive int or a tuple of them (one per spatial
    axis), as a tuple of ints.

    Args:
        name: str. The argument's name, for the message.
        value: the received value.
        ranks: a `range` of the lengths the tuple may have; an int
            `value` stands for a tuple of the first.

    Raises:
        ValueError: `value` is not such a size.
    """
    counts = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]} to {ranks[-1]}"
    error = ValueError(
        f"`{name}` must be a positive int or a tuple of {counts} positive "
        f"ints (one per spatial axis). Received: {name}={value!r}"
    )
    if is_int(value):
        values = (value,) * ranks[0]
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise error from None
    if len(values) not in ranks or not all(
        is_int(v) and v >= 1 for v in values
    ):
        raise error
    return tuple(int(v) for v in values)

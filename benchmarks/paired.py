r"""Paired comparison of two methods over seeds: the difference seed by seed,
its mean, standard deviation and Student-t confidence interval.

Runs of one seed start from the same initial weights (where the models
match) and see the same batches and augmentation, so the difference of a
seed's pair is what a method changes; the spread of those differences, not
the spread of each method's accuracies, is what a gain is measured
against. No SciPy: the t quantile comes from the closed form of the
t distribution's CDF for whole degrees of freedom (checked against
`scipy.stats.t` in the tests).

```python
from paired import paired_difference
paired_difference({0: 0.47, 1: 0.48}, {0: 0.46, 1: 0.465})
# {'seeds': [0, 1], 'differences': [0.01, 0.015], 'mean': 0.0125, ...}
```
"""

import math
import statistics


def t_cdf_two_sided(t, df):
    """`P(|T| <= t)` for Student's t with `df` (a whole number >= 1)
    degrees of freedom, `t >= 0`: the finite sums in cos(theta) with
    theta = atan(t / sqrt(df)), odd and even `df` apart."""
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"`df` must be an int >= 1. Received: df={df!r}")
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    odd = df % 2
    # df // 2 terms: 1 + 2/3 c2 + 2*4/(3*5) c2^2 + ... for odd df,
    # 1 + 1/2 c2 + 1*3/(2*4) c2^2 + ... for even df.
    series, term = 0.0, 1.0
    for j in range(df // 2):
        series += term
        term *= (2 * j + 1 + odd) / (2 * j + 2 + odd) * c2
    if odd:
        return (
            2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
        )
    return math.sin(theta) * series


def t_quantile(confidence, df):
    """The `t` with `P(|T| <= t) = confidence` (e.g. 0.95: the two-sided
    95% critical value, 4.303 for `df=2`), by bisection."""
    if not 0 < confidence < 1:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence={confidence}"
        )
    low, high = 0.0, 1.0
    while t_cdf_two_sided(high, df) < confidence:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_cdf_two_sided(middle, df) < confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def paired_difference(values, reference, confidence=0.95):
    """`values` minus `reference`, seed by seed, over the seeds both have.

    Args:
        values: dict seed -> a run's value (e.g. test top-1).
        reference: dict seed -> the reference method's value.
        confidence: float. Coverage of the interval.

    Returns:
        A dict: `seeds` (sorted, shared), `differences` (in that order),
        `mean`, and with 2 or more pairs `std` (sample standard deviation)
        and `low`, `high` (mean -+ t * std / sqrt(n), Student t with n - 1
        degrees of freedom); `None` for those with one pair. `None` when no
        seed is shared.
    """
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    differences = [values[s] - reference[s] for s in seeds]
    result = {
        "seeds": seeds,
        "differences": differences,
        "mean": statistics.mean(differences),
        "std": None,
        "low": None,
        "high": None,
    }
    if len(seeds) > 1:
        std = statistics.stdev(differences)
        half = (
            t_quantile(confidence, len(seeds) - 1) * std / math.sqrt(len(seeds))
        )
        result.update(
            std=std, low=result["mean"] - half, high=result["mean"] + half
        )
    return result

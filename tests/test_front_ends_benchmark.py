"""`benchmarks/front_ends.py`: its table against hand-computed means and a
hand-computed paired interval, and the committed table is what
docs/results.md quotes. The module defines absl flags that
`benchmarks/accuracy.py` defines too, so it is imported in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import BACKEND

REPO = pathlib.Path(__file__).resolve().parents[1]

TABLE = """
import json, sys
from absl import flags
import front_ends
flags.FLAGS(["front_ends.py", "--width=0.25", "--epochs=10"])
study, example = (
    {int(k): v for k, v in d.items()} for d in json.loads(sys.argv[1])
)
print(front_ends.table(study, example))
"""


def front_ends_table(study, example):
    """`front_ends.table(study, example)`, written by a fresh process."""
    process = subprocess.run(
        [sys.executable, "-c", TABLE, json.dumps([study, example])],
        cwd=REPO / "benchmarks",
        env=dict(os.environ, KERAS_BACKEND=BACKEND),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


@pytest.mark.skipif(BACKEND != "jax", reason="backend-free; run once")
def test_table_gives_the_paired_difference_and_its_interval():
    """Seeds 0 and 1: study 25% and 20%, example 30% and 21%. The
    differences are +5 and +1 points: mean +3, standard deviation
    sqrt(8) = 2.83, standard error 2, and t(0.975, 1 df) = 12.706, so the
    interval is 3 -/+ 25.41."""
    text = front_ends_table({0: 0.25, 1: 0.20}, {0: 0.30, 1: 0.21})
    assert "| benchmarks/accuracy.py | 25.0 | 20.0 | 22.50 ± 3.54 |" in text
    assert "| examples/train_cifar.py | 30.0 | 21.0 | 25.50 ± 6.36 |" in text
    assert (
        "Example - study, paired by seed: +3.00 points, "
        "95% interval [-22.41, +28.41]." in text
    )
    one = front_ends_table({0: 0.25}, {0: 0.30})
    assert "| benchmarks/accuracy.py | 25.0 | 25.00 ± 0.00 |" in one
    assert "+5.00 points, 95% interval (one pair: none)." in one


def test_the_committed_table_is_the_one_the_docs_quote():
    """docs/results.md's rows and verdict (its file names in backticks)."""
    table = (REPO / "benchmarks" / "results" / "front_ends.md").read_text()
    docs = (REPO / "docs" / "results.md").read_text().replace("`", "")
    for line in table.splitlines():
        if line.startswith(("| benchmarks/", "| examples/")):
            assert line in docs, line
    verdict = "paired by seed: +3.83 points, 95% interval [-10.29, +17.96]."
    assert verdict in table and verdict in docs

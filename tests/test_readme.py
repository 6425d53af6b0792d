"""The README's quickstart runs as written, offline, on the shipped data.

It runs once, on TensorFlow (Keras's default backend, which the README's
`python3 quickstart.py` uses): the other backends' training and refreshes
are tested by the other files, and `make release-check` runs the installed
wheel on JAX.
"""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_python_block(heading):
    """The first Python code block in the README section `## heading`."""
    readme = (REPO / "README.md").read_text()
    section = readme.partition(f"\n## {heading}\n")[2].partition("\n## ")[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"README.md has no Python block under '## {heading}'"
    return match[1]


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the README runs the quickstart on the default backend",
)
def test_quickstart_runs_as_written(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(readme_python_block("Quickstart"))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,  # "Save it as quickstart.py in the clone"
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = re.search(r"^test accuracy: ([0-9.]+)$", result.stdout, re.M)
    assert accuracy, result.stdout[-3000:]
    assert 0.2 < float(accuracy[1]) <= 1.0  # chance is 0.1
    refreshes = re.search(
        r"^MI refreshes \(s\): \[(.*)\]$", result.stdout, re.M
    )
    assert refreshes and len(refreshes[1].split(",")) == 2, result.stdout

"""The docs stay true mechanically: every Python block of README.md,
docs/guide.md and docs/recipes.md runs in a test or says what it leaves
undefined, and every `keras_sgs` name and keyword argument they use is the
code's. Cheap: `import keras_sgs` and text, except the guide's custom
training loop, which runs on this backend at a tiny size."""

import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import BACKEND

import keras_sgs

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/guide.md", "docs/recipes.md"]
# A block that is not run says so in its first line.
MARKS = ("# A fragment", "# Signature", "# Pseudocode")
# Blocks run by a test, by (file, the heading they sit under).
RUN = {
    ("README.md", "Quickstart"): "tests/test_readme.py",
    ("docs/guide.md", "Custom training loops"): "test_custom_loop_runs",
}


def python_blocks(path):
    """`[(heading, code)]`: each ```python block of `path` under the
    nearest `##`/`###` heading before it."""
    heading, blocks, code = None, [], None
    for line in (REPO / path).read_text().splitlines():
        if code is not None:
            if line.startswith("```"):
                blocks.append((heading, "\n".join(code)))
                code = None
            else:
                code.append(line)
        elif line.startswith("```python"):
            code = []
        elif line.startswith("## ") or line.startswith("### "):
            heading = line.lstrip("#").strip()
    return blocks


def run_heading(path, heading):
    """The `RUN` heading `heading` sits under (itself, or the `##` section
    holding it), or None."""
    text = (REPO / path).read_text()
    for (doc, runs), _ in RUN.items():
        if doc != path:
            continue
        section = text.partition(f"\n## {runs}\n")[2].partition("\n## ")[0]
        if heading == runs or f"\n### {heading}\n" in section:
            return runs
    return None


@pytest.mark.parametrize("path", DOCS)
def test_every_python_block_runs_or_is_marked(path):
    blocks = python_blocks(path)
    assert blocks, f"{path} has no Python block"
    for heading, code in blocks:
        if run_heading(path, heading):
            continue
        assert code.lstrip().startswith(MARKS), (
            f"{path}, under '{heading}': a Python block that no test runs "
            f"must begin with one of {MARKS} and say what it leaves "
            f"undefined. Received:\n{code[:300]}"
        )


def keras_sgs_calls(text):
    """`[(dotted name, argument text)]` of every `keras_sgs.name(...)` in
    `text` (one level of nested parentheses in the arguments)."""
    pattern = r"keras_sgs\.([\w.]+)\(((?:[^()]|\([^()]*\))*)\)"
    return re.findall(pattern, text)


def keywords(arguments):
    """The keyword names in a call's (or a signature's) argument text."""
    flat = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", arguments)
    return re.findall(r"(?:^|,)\s*(\w+)\s*=(?!=)", flat)


def resolve(dotted):
    obj = keras_sgs
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@pytest.mark.parametrize("path", DOCS)
def test_docs_name_real_objects_and_arguments(path):
    text = (REPO / path).read_text()
    calls = keras_sgs_calls(text)
    assert calls, f"{path} names no keras_sgs call"
    for dotted, arguments in calls:
        obj = resolve(dotted)
        assert obj is not None, f"{path}: keras_sgs.{dotted} does not exist"
        if not callable(obj):
            continue
        # Named parameters only: `SGSWrapper(**kwargs)` refuses every
        # keyword it does not name.
        parameters = inspect.signature(obj).parameters
        for name in keywords(arguments):
            assert name in parameters, (
                f"{path}: keras_sgs.{dotted}({arguments}) passes `{name}`, "
                f"which it does not take; it takes {list(parameters)}"
            )


def test_the_name_check_catches_what_the_docs_got_wrong():
    """The README once wrote `SGSWrapper(optimizer, ...)` (the parameter is
    `inner_optimizer`) and the guide a `build_model` without
    `input_shape`: keyword names are read from signature-like text too."""
    text = (
        "`keras_sgs.SGSWrapper(optimizer=SGD(), mode='update')` and "
        "`keras_sgs.models.build_model(name, num_classes, width=1.0, "
        'head="linear", shape=(32, 32, 3))`'
    )
    calls = keras_sgs_calls(text)
    assert [c[0] for c in calls] == ["SGSWrapper", "models.build_model"]
    assert keywords(calls[0][1]) == ["optimizer", "mode"]
    assert keywords(calls[1][1]) == ["width", "head", "shape"]
    sgs = inspect.signature(keras_sgs.SGSWrapper).parameters
    assert "optimizer" not in sgs and "inner_optimizer" in sgs


def test_custom_loop_runs(tmp_path):
    """The guide's custom training loop for this backend, as written, on
    random images, in a subprocess (the backend is read at import)."""
    blocks = [
        code
        for heading, code in python_blocks("docs/guide.md")
        if run_heading("docs/guide.md", heading) == "Custom training loops"
    ]
    names = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}
    (code,) = [c for c in blocks if f"# {names[BACKEND]}:" in c]
    script = tmp_path / "loop.py"
    script.write_text(code)
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "masks refreshed: 1" in result.stdout, result.stdout[-2000:]

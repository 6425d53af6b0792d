"""The examples' `--output_dir`: a run is recorded there only once it has
passed every check, and one live run at a time holds it (`run_dir`)."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest
from conftest import tensorflow_only
from test_examples import TINY
from test_examples import read_json
from test_examples import run_script

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import run_dir  # noqa: E402

HOLD = f"""
import os, signal, sys
sys.path.insert(0, {str(EXAMPLES)!r})
import run_dir

with run_dir.locked(sys.argv[1]):
    print("held", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
"""


def hold(output_dir, then):
    """A process holding `output_dir`, once it says so; `then` is `kill`
    (it kills itself) or `wait` (it ends when its stdin closes)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output_dir), then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "held\n"
    return process


def test_one_live_run_holds_the_output_dir(tmp_path):
    with run_dir.locked(tmp_path):
        with pytest.raises(
            RuntimeError,
            match=f"{tmp_path} is in use by a live run \\(process "
            f"{os.getpid()}\\)",
        ):
            with run_dir.locked(tmp_path):
                pass
    with run_dir.locked(tmp_path):  # released at the end of the block
        pass
    other = hold(tmp_path, "wait")
    try:
        with pytest.raises(RuntimeError, match=f"process {other.pid}"):
            with run_dir.locked(tmp_path):
                pass
    finally:
        other.communicate("")
    # A killed run leaves no lock behind.
    killed = hold(tmp_path, "kill")
    assert killed.wait() == -signal.SIGKILL
    with run_dir.locked(tmp_path):
        pass


@tensorflow_only
@pytest.mark.parametrize("script", ["train_cifar.py", "compare.py"])
def test_a_second_run_into_a_live_runs_folder_is_refused_at_once(
    script, tmp_path
):
    with run_dir.locked(tmp_path):
        output = run_script(
            script, *TINY, f"--output_dir={tmp_path}", expect_returncode=1
        )
    assert (
        f"{tmp_path} is in use by a live run (process {os.getpid()})" in output
    )
    assert os.listdir(tmp_path) == [run_dir.LOCK]


@tensorflow_only
def test_a_start_refused_for_its_data_records_nothing(tmp_path):
    """The corrected command is then a first start, not a restart with
    other flags."""
    output = run_script(
        "train_cifar.py",
        *TINY,
        "--batch_size=8000",
        f"--output_dir={tmp_path}",
        expect_returncode=1,
    )
    assert (
        "--batch_size=8000 is larger than the training data (4000 examples"
        in output
    )
    assert not (tmp_path / run_dir.RUN_FLAGS).exists()
    output = run_script(
        "train_cifar.py",
        *TINY,
        "--epochs=1",
        "--steps_per_epoch=1",
        f"--output_dir={tmp_path}",
    )
    assert read_json(tmp_path / run_dir.RUN_FLAGS)["flags"]["batch_size"] == 32
    assert read_json(tmp_path / "results.json")["epochs"] == 1
    # `fit` on the shuffled tf.data pipeline: no warning that its own
    # `shuffle=True` is ignored.
    assert "shuffle" not in output

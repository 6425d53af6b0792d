"""SGSWrapper and MIScalingCallback under MultiWorkerMirroredStrategy.

Two local worker processes (`multi_worker_main.py`, one CPU replica each)
train the same conv net (Conv2D + BatchNormalization + ReLU blocks) for 3
epochs on real CIFAR-10 images, each on its shard of every batch, with the
SGS masks recomputed from mutual information at the start of epochs 1 and 2.

Each worker's callback estimates the masks from its own copy of the model,
whose BatchNormalization moving statistics Keras does not synchronise
across workers, and assigns them outside the train step. The test checks
that both workers exit cleanly, start from the same weights (MWMS
broadcasts the chief's initial values), hold the same masks, which the
callback really changed from ones, and end with the same, trained weights.
Unequal masks would scale the workers' steps differently: with
`mode="update"` their models drift apart.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CIFAR10_DIR
from conftest import tensorflow_only

WORKER = pathlib.Path(__file__).with_name("multi_worker_main.py")
TIMEOUT_S = 240


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(mode, tmp_path):
    """Runs both workers; returns their saved arrays, the chief's first.

    A worker that fails or hangs fails the test with both logs' tails.
    """
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    records = str(CIFAR10_DIR / "train-00000-of-00008.tfrecord")
    processes, logs, outs = [], [], []
    for index in range(2):
        task = {"type": "worker", "index": index}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
            KERAS_BACKEND="tensorflow",
            CUDA_VISIBLE_DEVICES="",
        )
        logs.append(tmp_path / f"worker{index}.log")
        outs.append(tmp_path / f"worker{index}.npz")
        with open(logs[-1], "w") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), records, mode, outs[-1]],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            process.kill()  # does nothing to a worker that has exited
            process.wait()
    codes = [process.returncode for process in processes]
    if codes != [0, 0]:
        tails = "".join(
            f"\n--- worker {i}, exit code {code} ---\n"
            + log.read_text()[-3000:]
            for i, (code, log) in enumerate(zip(codes, logs))
        )
        pytest.fail(f"Workers not both done with exit code 0 in time:{tails}")
    results = []
    for out in outs:
        with np.load(out) as saved:
            results.append(dict(saved))
    return results


def arrays(saved, prefix):
    count = sum(name.startswith(prefix + "_") for name in saved)
    return [saved[f"{prefix}_{i}"] for i in range(count)]


@tensorflow_only
@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_two_workers_stay_in_sync(mode, tmp_path):
    chief, other = run_workers(mode, tmp_path)
    for prefix in ["initial", "mask", "final"]:
        ours, theirs = arrays(chief, prefix), arrays(other, prefix)
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    masks = arrays(chief, "mask")
    assert [m.shape for m in masks] == [(3, 3, 1, 1)] * 3
    for mask in masks:
        assert not np.allclose(mask, 1.0)
    kernels = [
        (a, b)
        for a, b in zip(arrays(chief, "initial"), arrays(chief, "final"))
        if a.ndim > 1
    ]
    assert len(kernels) == 4  # three conv kernels and the Dense head
    for a, b in kernels:
        assert np.abs(a - b).max() > 1e-3

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
TRAIN_CIFAR = WORKER.parents[1] / "examples" / "train_cifar.py"
TIMEOUT_S = 240


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(command, tmp_path, expect=(0, 0)):
    """Runs `command` as worker 0 and worker 1 of a local cluster (each
    process with its `TF_CONFIG`) and waits for both.

    A worker that hangs or exits with another code than `expect` fails the
    test with both logs' tails.
    """
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    processes, logs = [], []
    for index in range(2):
        task = {"type": "worker", "index": index}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
            KERAS_BACKEND="tensorflow",
            CUDA_VISIBLE_DEVICES="",
        )
        logs.append(tmp_path / f"worker{index}.log")
        with open(logs[-1], "a") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, *map(str, command(index))],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
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
    codes = tuple(process.returncode for process in processes)
    if codes != tuple(expect):
        tails = "".join(
            f"\n--- worker {i}, exit code {code} ---\n"
            + log.read_text()[-3000:]
            for i, (code, log) in enumerate(zip(codes, logs))
        )
        pytest.fail(f"Workers not done with exit codes {expect}:{tails}")


def run_sgs_workers(mode, tmp_path):
    """Runs `multi_worker_main.py`; returns the workers' saved arrays, the
    chief's first."""
    records = CIFAR10_DIR / "train-00000-of-00008.tfrecord"
    outs = [tmp_path / f"worker{index}.npz" for index in range(2)]
    run_workers(lambda index: [WORKER, records, mode, outs[index]], tmp_path)
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
    chief, other = run_sgs_workers(mode, tmp_path)
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


def saved_model_state(path):
    """The trainable weights and SGS masks of a saved `model.keras`."""
    import keras

    import keras_sgs  # noqa: F401  (registers SGSWrapper for loading)

    model = keras.saving.load_model(path)
    optimizer = model.optimizer
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    masks = [
        keras.ops.convert_to_numpy(optimizer.get_mask(v))
        for v in model.trainable_variables
        if optimizer.get_mask(v) is not None
    ]
    return weights, masks


@tensorflow_only
def test_train_cifar_on_two_workers_resumes_after_a_kill(tmp_path):
    """`examples/train_cifar.py --strategy=multiworker` end to end: both
    workers stop after epoch 2 of 3 (like a killed job), are started again,
    resume from their backups and finish with the same weights and masks."""
    out = tmp_path / "run"
    flags = [
        TRAIN_CIFAR,
        "--strategy=multiworker",
        "--method=sgs_mi",
        "--width=0.125",
        "--batch_size=32",
        "--steps_per_epoch=2",
        "--epochs=3",
        "--refresh_every=1",
        "--verbose=2",
        f"--output_dir={out}",
    ]
    run_workers(
        lambda _: [*flags, "--stop_after_epoch=2"], tmp_path, expect=(75, 75)
    )
    run_workers(lambda _: flags, tmp_path)
    worker_dir = out / "workers" / "worker_1"
    for folder in (out, worker_dir):
        with open(folder / "results.json") as f:
            results = json.load(f)
        assert results["replicas"] == 2
        assert results["resumed_from_epoch"] == 2
        assert results["sgs_refreshes"] == 2  # epochs 2 and 3
    chief_weights, chief_masks = saved_model_state(out / "model.keras")
    weights, masks = saved_model_state(worker_dir / "model.keras")
    assert len(chief_masks) == len(masks) == 8  # VGG-11's 3x3 convs
    for a, b in zip(chief_weights + chief_masks, weights + masks):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not all(np.allclose(m, 1.0) for m in chief_masks)

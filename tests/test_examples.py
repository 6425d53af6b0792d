"""The example scripts, each run in its own process on tiny settings.

A subprocess keeps their flags, strategies and dtype policies out of the
test process. They train on the CIFAR-10 sample shipped in
`data/cifar10_sample`.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tensorflow_only

from keras_sgs.plotting import model_masks

pytestmark = tensorflow_only

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SAMPLE = REPO / "data" / "cifar10_sample"
# Tiny runs: 2 epochs of 2 steps of 32 images on a narrow model, every
# SGS-MI refresh possible (from epoch 2 on).
TINY = [
    "--width=0.125",
    "--batch_size=32",
    "--steps_per_epoch=2",
    "--epochs=2",
    "--refresh_every=1",
    "--verbose=2",
]
STOPPED_EXIT_CODE = 75  # examples/run_callbacks.py


def run_script(script, *args, expect_returncode=0):
    """Runs `examples/<script>` with `args`; returns its output."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow",
               TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = process.stdout + process.stderr
    assert process.returncode == expect_returncode, output[-5000:]
    return output


def read_json(path):
    with open(path) as f:
        return json.load(f)


def check_outputs(output_dir, method, epochs=2, weight_decay=5e-4):
    """Checks `results.json`, `history.json`, `masks.png` and that the
    saved model trains on with the coupled weight decay; returns the
    results."""
    results = read_json(output_dir / "results.json")
    history = read_json(output_dir / "history.json")
    assert results["method"] == method
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert np.isfinite(results["test_cross_entropy"])
    assert results["seconds_per_epoch"] > 0
    assert history["epoch"] == list(range(1, epochs + 1))
    assert all(np.isfinite(history["loss"]))
    optimizer = keras.saving.load_model(output_dir / "model.keras").optimizer
    assert optimizer.coupled_weight_decay == weight_decay
    assert (output_dir / "masks.png").exists() == (
        method in ("sgs_mi", "sgs_constant"))
    return results


def check_sgs_mi_refreshed(results, history):
    """The warm-up epoch keeps ones; each later epoch refreshes."""
    assert results["sgs_refreshes"] == len(history["epoch"]) - 1
    assert results["sgs_refresh_seconds"] > 0
    assert history["sgs_mask_min"][0] == history["sgs_mask_max"][0] == 1
    assert history["sgs_mask_min"][-1] < 1 < history["sgs_mask_max"][-1]


def check_fused(results):
    """The fused model predicts like the branched one. After 4 steps the
    batch-norm statistics are barely trained and the logits large, so
    float32 rounding moves the cross-entropy by up to ~1e-3."""
    assert results["fused_test_accuracy"] == results["test_accuracy"]
    np.testing.assert_allclose(
        results["fused_test_cross_entropy"], results["test_cross_entropy"],
        rtol=1e-2)


def test_compare_trains_baseline_and_sgs_mi(tmp_path):
    """The README's main job (train_cifar's code for each method)."""
    output = run_script("compare.py", *TINY, f"--output_dir={tmp_path}")
    assert "| baseline |" in output and "| sgs_mi |" in output
    assert "vgg11 sgs_mi: test accuracy" in output
    results = read_json(tmp_path / "results.json")
    assert set(results) == {"baseline", "sgs_mi"}
    for method in results:
        assert results[method] == check_outputs(tmp_path / method, method)
        assert results[method]["train_examples"] == 4000
    check_sgs_mi_refreshed(
        results["sgs_mi"], read_json(tmp_path / "sgs_mi" / "history.json"))
    assert (tmp_path / "masks.png").exists()


@pytest.mark.parametrize("method", ["sgs_constant", "acb", "repvgg"])
def test_train_cifar_methods(method, tmp_path):
    output = run_script(
        "train_cifar.py", "--model=vgg11", f"--method={method}", *TINY,
        f"--output_dir={tmp_path}")
    results = check_outputs(tmp_path, method)
    assert f"vgg11 {method}: test accuracy" in output
    if method == "sgs_constant":
        assert results["sgs_refreshes"] == 0
        assert "sgs_mask_min" not in read_json(tmp_path / "history.json")
        # The saved optimizer holds ACNet's mask for every 3x3 conv.
        model = keras.saving.load_model(tmp_path / "model.keras")
        masks = model_masks(model)
        assert len(masks) == 8  # VGG-11's convs
        acb = [[1, 2, 1], [2, 3, 2], [1, 2, 1]]
        for mask in masks.values():
            np.testing.assert_array_equal(mask, acb)
    else:
        check_fused(results)


def test_train_cifar_resumes_after_a_kill(tmp_path):
    args = ["--model=vgg11", "--method=baseline", *TINY, "--epochs=3",
            f"--output_dir={tmp_path}"]
    first = run_script("train_cifar.py", *args, "--stop_after_epoch=1",
                       expect_returncode=STOPPED_EXIT_CODE)
    assert "Epoch 1/3" in first and "Epoch 2/3" not in first
    assert not (tmp_path / "results.json").exists()
    seconds_first = read_json(tmp_path / "history.json")["epoch_seconds"]

    second = run_script("train_cifar.py", *args)
    assert "Epoch 1/3" not in second and "Epoch 2/3" in second
    results = check_outputs(tmp_path, "baseline", epochs=3)
    assert results["resumed_from_epoch"] == 1
    history = read_json(tmp_path / "history.json")
    assert history["epoch_seconds"][0] == seconds_first[0]
    assert not (tmp_path / "backup").exists()  # removed once finished


@pytest.mark.parametrize(
    "method, flag, replicas",
    [("acb", "--strategy=mirrored", 2), ("sgs_mi", "--mixed_precision", 1)],
)
def test_train_cifar_mirrored_and_mixed_precision(
    method, flag, replicas, tmp_path
):
    run_script("train_cifar.py", "--model=vgg11", f"--method={method}",
               *TINY, flag, f"--output_dir={tmp_path}")
    results = check_outputs(tmp_path, method)
    assert results["replicas"] == replicas
    assert results["mixed_precision"] == (flag == "--mixed_precision")
    if method == "sgs_mi":
        check_sgs_mi_refreshed(
            results, read_json(tmp_path / "history.json"))
    else:
        check_fused(results)


def write_jpeg_records(path, images, labels):
    """TFRecords in the ImageNet format, JPEG images."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels):
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_jpeg(image).numpy()])),
                "image/class/label": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(label)])),
            }
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)
            ).SerializeToString())


def test_train_imagenet_on_two_cpus(tmp_path):
    import tensorflow as tf

    from keras_sgs.tfrecords import read_image_records

    images, labels = read_image_records(
        str(SAMPLE / "train.tfrecord"), limit=48)
    # Not square, so that the crops have work to do.
    images = tf.cast(tf.image.resize(images, (64, 80)), tf.uint8).numpy()
    write_jpeg_records(tmp_path / "train.tfrecord", images[:32], labels[:32])
    write_jpeg_records(tmp_path / "test.tfrecord", images[32:], labels[32:])
    output_dir = tmp_path / "out"
    run_script(
        "train_imagenet.py",
        "--model=imagenet_resnet18",
        "--method=sgs_mi",
        f"--data={tmp_path / 'train.tfrecord'}",
        f"--test_data={tmp_path / 'test.tfrecord'}",
        "--num_classes=10",
        "--image_size=64",
        "--strategy=mirrored",
        *TINY,
        "--batch_size=16",
        f"--output_dir={output_dir}",
    )
    results = check_outputs(output_dir, "sgs_mi", weight_decay=1e-4)
    assert results["replicas"] == 2
    assert results["train_examples"] == 32
    assert results["learning_rate"] == pytest.approx(0.1 * 16 / 256)
    check_sgs_mi_refreshed(results, read_json(output_dir / "history.json"))


def test_tfds_without_tensorflow_datasets_says_how_to_install(tmp_path):
    if importlib.util.find_spec("tensorflow_datasets"):
        pytest.skip("tensorflow_datasets is installed")
    output = run_script(
        "train_cifar.py", "--tfds_name=cifar100", *TINY,
        f"--output_dir={tmp_path}", expect_returncode=1)
    assert "pip install tensorflow-datasets" in output

"""The example scripts, each run in its own process on tiny settings.

A subprocess keeps their flags, strategies and dtype policies out of the
test process. They train on the CIFAR-10 sample shipped in
`data/cifar10_sample`.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import CIFAR100_DIR
from conftest import tensorflow_only

from keras_sgs.plotting import model_masks

pytestmark = tensorflow_only

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TESTS = REPO / "tests"
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


def run_script(script, *args, expect_returncode=0, tfds_examples=None):
    """Runs `examples/<script>` with `args`; returns its output. With
    `tfds_examples`, tensorflow_datasets is mocked to hold that many
    random examples of each split (`tfds_mock_main.py`)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, str(EXAMPLES / script), *args]
    if tfds_examples:
        command[1:1] = [str(TESTS / "tfds_mock_main.py"), str(tfds_examples)]
    process = subprocess.run(
        command,
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
    if results.get("mixed_precision"):
        # Loaded as a user resumes it: Keras restores a LossScaleOptimizer's
        # state only under the policy it was trained with (under float32 it
        # builds no LossScaleOptimizer and skips the whole optimizer state,
        # with or without SGSWrapper).
        keras.config.set_dtype_policy("mixed_float16")
    optimizer = keras.saving.load_model(output_dir / "model.keras").optimizer
    if results.get("mixed_precision"):
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        optimizer = optimizer.inner_optimizer
    assert optimizer.coupled_weight_decay == weight_decay
    assert (output_dir / "masks.png").exists() == (
        method in ("sgs_mi", "sgs_constant", "repopt")
    )
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
        results["fused_test_cross_entropy"],
        results["test_cross_entropy"],
        rtol=1e-2,
    )


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
        results["sgs_mi"], read_json(tmp_path / "sgs_mi" / "history.json")
    )
    assert (tmp_path / "masks.png").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """`finished_run(method)`: `(folder, output)` of a finished TINY
    `train_cifar.py` run of `method` on VGG-11, trained once per module
    (the method tests and the export tests share it; a test that writes
    copies it first)."""
    runs = {}

    def run(method):
        if method not in runs:
            folder = tmp_path_factory.mktemp(method)
            output = run_script(
                "train_cifar.py",
                "--model=vgg11",
                f"--method={method}",
                *TINY,
                f"--output_dir={folder}",
            )
            runs[method] = folder, output
        return runs[method]

    return run


@pytest.mark.parametrize("method", ["sgs_constant", "acb", "repvgg"])
def test_train_cifar_methods(method, finished_run):
    output_dir, output = finished_run(method)
    results = check_outputs(output_dir, method)
    assert f"vgg11 {method}: test accuracy" in output
    if method == "sgs_constant":
        assert results["sgs_refreshes"] == 0
        assert "sgs_mask_min" not in read_json(output_dir / "history.json")
        # The saved optimizer holds ACNet's mask for every 3x3 conv.
        model = keras.saving.load_model(output_dir / "model.keras")
        masks = model_masks(model)
        assert len(masks) == 8  # VGG-11's convs
        acb = [[1, 2, 1], [2, 3, 2], [1, 2, 1]]
        for mask in masks.values():
            np.testing.assert_array_equal(mask, acb)
    else:
        check_fused(results)


def test_train_cifar_repopt(tmp_path):
    """RepOptimizer with constant scales: a per-output-channel CSLA
    multiplier on every 3x3 conv, one layer's scales from a file."""
    scales = tmp_path / "scales.json"
    scales.write_text(json.dumps({"conv3_conv": {"scale_3x3": 2.0}}))
    out = tmp_path / "run"
    flags = ["--method=repopt", *TINY, "--repopt_scale_1x1=0.5"]
    run_script(
        "train_cifar.py",
        *flags,
        f"--repopt_scales_file={scales}",
        f"--output_dir={out}",
    )
    check_outputs(out, "repopt")
    model = keras.saving.load_model(out / "model.keras")
    convs = [
        layer for layer in model.layers if type(layer) is keras.layers.Conv2D
    ]
    assert len(convs) == 8  # VGG-11's 3x3 convs
    for layer in convs:
        mask = model.optimizer.get_mask(layer.kernel)
        mask = keras.ops.convert_to_numpy(mask)
        assert mask.shape == (3, 3, 1, layer.kernel.shape[-1])
        expected = np.full((3, 3), 4.0 if layer.name == "conv3_conv" else 1.0)
        expected[1, 1] += 0.5**2
        np.testing.assert_allclose(
            mask, np.broadcast_to(expected[..., None, None], mask.shape)
        )

    scales.write_text(json.dumps({"conv3": {"scale_3x3": 2.0}}))
    output = run_script(
        "train_cifar.py",
        *flags,
        f"--repopt_scales_file={scales}",
        f"--output_dir={tmp_path / 'other'}",
        expect_returncode=1,
    )
    assert "names layers that are not 3x3 convs of the model: ['conv3']" in (
        output
    )


def test_train_cifar_resumes_after_a_kill(tmp_path):
    args = [
        "--model=vgg11",
        "--method=baseline",
        *TINY,
        "--epochs=3",
        f"--output_dir={tmp_path}",
    ]
    first = run_script(
        "train_cifar.py",
        *args,
        "--stop_after_epoch=1",
        expect_returncode=STOPPED_EXIT_CODE,
    )
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

    # A finished run started again has nothing left to train.
    third = run_script("train_cifar.py", *args)
    assert "this run finished; nothing to train" in third
    assert "Epoch" not in third
    assert read_json(tmp_path / "results.json") == results


@pytest.mark.parametrize(
    "method, flag, replicas",
    [("acb", "--strategy=mirrored", 2), ("sgs_mi", "--mixed_precision", 1)],
)
def test_train_cifar_mirrored_and_mixed_precision(
    method, flag, replicas, tmp_path
):
    run_script(
        "train_cifar.py",
        "--model=vgg11",
        f"--method={method}",
        *TINY,
        flag,
        f"--output_dir={tmp_path}",
    )
    results = check_outputs(tmp_path, method)
    assert results["replicas"] == replicas
    assert results["mixed_precision"] == (flag == "--mixed_precision")
    if method == "sgs_mi":
        check_sgs_mi_refreshed(results, read_json(tmp_path / "history.json"))
    else:
        check_fused(results)


def write_image_records(path, images, labels, encode="jpeg"):
    """TFRecords in the ImageNet format (`image/encoded`,
    `image/class/label`), JPEG or PNG images."""
    import tensorflow as tf

    encode = {"jpeg": tf.io.encode_jpeg, "png": tf.io.encode_png}[encode]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels):
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[encode(image).numpy()])
                ),
                "image/class/label": tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(label)])
                ),
            }
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(feature=feature)
                ).SerializeToString()
            )


def test_train_imagenet_on_two_cpus(tmp_path):
    import tensorflow as tf

    from keras_sgs.tfrecords import read_image_records

    images, labels = read_image_records(
        str(SAMPLE / "train.tfrecord"), limit=48
    )
    # Not square, so that the crops have work to do.
    images = tf.cast(tf.image.resize(images, (64, 80)), tf.uint8).numpy()
    write_image_records(tmp_path / "train.tfrecord", images[:32], labels[:32])
    write_image_records(tmp_path / "test.tfrecord", images[32:], labels[32:])
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


# -- tensorflow_datasets, offline --------------------------------------


@pytest.mark.parametrize(
    "script, name, classes, method",
    [
        ("train_cifar.py", "cifar10", 10, "baseline"),
        ("train_cifar.py", "cifar100", 100, "sgs_mi"),
        ("train_imagenet.py", "imagenet2012", 1000, "baseline"),
    ],
)
def test_tfds_datasets(script, name, classes, method, tmp_path):
    """`--tfds_name` end to end on `tfds.testing.mock_data` (the MI
    refresh once: the rest of the pipeline is what differs)."""
    extra = ["--image_size=64", "--strategy=default"] * (
        script == "train_imagenet.py"
    )
    run_script(
        script,
        f"--tfds_name={name}",
        f"--method={method}",
        *TINY,
        "--batch_size=16",
        *extra,
        f"--output_dir={tmp_path}",
        tfds_examples=48,
    )
    weight_decay = 1e-4 if name == "imagenet2012" else 5e-4
    results = check_outputs(tmp_path, method, weight_decay=weight_decay)
    assert results["data"] == f"tfds:{name}"
    assert results["num_classes"] == classes
    if name == "cifar100":  # the authors' CIFAR-100 model
        model = keras.saving.load_model(tmp_path / "model.keras")
        assert model.get_layer("fc1").units == 512  # 4096 at width 1/8
    assert results["train_examples"] == 48  # counted: the mock has no splits
    if method == "sgs_mi":
        check_sgs_mi_refreshed(results, read_json(tmp_path / "history.json"))


# -- restarts ------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run_files(tmp_path_factory):
    """A 3-epoch sgs_mi run stopped after its first epoch (made once)."""
    output_dir = tmp_path_factory.mktemp("stopped")
    run_script(
        "train_cifar.py",
        "--method=sgs_mi",
        *TINY,
        "--epochs=3",
        "--stop_after_epoch=1",
        f"--output_dir={output_dir}",
        expect_returncode=STOPPED_EXIT_CODE,
    )
    return output_dir


def stopped_run(output_dir, files):
    """A copy of `stopped_run_files` in `output_dir`."""
    shutil.copytree(files, output_dir, dirs_exist_ok=True)


def failed_restart(output_dir):
    """The output of restarting the stopped run in `output_dir`, which
    must fail."""
    return run_script(
        "train_cifar.py",
        "--method=sgs_mi",
        *TINY,
        "--epochs=3",
        f"--output_dir={output_dir}",
        expect_returncode=1,
    )


def test_restart_with_other_flags_is_refused(stopped_run_files, tmp_path):
    stopped_run(tmp_path, stopped_run_files)
    recorded = read_json(tmp_path / "run_flags.json")
    assert recorded["task"] == "cifar"
    assert recorded["flags"]["method"] == "sgs_mi"
    output = run_script(
        "train_cifar.py",
        "--method=baseline",
        *TINY,
        "--epochs=3",
        "--width=0.25",
        f"--output_dir={tmp_path}",
        expect_returncode=1,
    )
    assert "--method: 'sgs_mi' -> 'baseline'" in output
    assert "--width: 0.125 -> 0.25" in output
    assert "--overwrite" in output
    assert "Epoch 1/3" not in output
    assert read_json(tmp_path / "run_flags.json") == recorded

    run_script(
        "train_cifar.py",
        "--method=baseline",
        *TINY,
        "--epochs=3",
        "--overwrite",
        f"--output_dir={tmp_path}",
    )
    results = read_json(tmp_path / "results.json")
    assert results["method"] == "baseline"
    assert results["resumed_from_epoch"] == 0
    assert results["sgs_refreshes"] == 0
    assert read_json(tmp_path / "history.json")["epoch"] == [1, 2, 3]
    assert read_json(tmp_path / "run_flags.json")["flags"]["method"] == (
        "baseline"
    )


def test_unrecorded_run_folder_is_refused(tmp_path):
    (tmp_path / "history.json").write_text("{}")
    output = run_script(
        "train_cifar.py", *TINY, f"--output_dir={tmp_path}", expect_returncode=1
    )
    assert "history.json" in output and "run_flags.json is missing" in output


def test_corrupt_history_names_the_file(stopped_run_files, tmp_path):
    stopped_run(tmp_path, stopped_run_files)
    history = tmp_path / "history.json"
    history.write_text(history.read_text()[:20])  # a kill mid-write
    output = failed_restart(tmp_path)
    assert f"{history} is corrupt" in output
    assert "--overwrite" in output


def test_unreadable_backup_names_the_folder(stopped_run_files, tmp_path):
    stopped_run(tmp_path, stopped_run_files)
    weights = tmp_path / "backup" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    output = failed_restart(tmp_path)
    assert f"The backup in {tmp_path / 'backup'} cannot be read" in output
    assert "--overwrite" in output


# -- data checked before training ----------------------------------------


@pytest.fixture
def sample_images():
    from keras_sgs.tfrecords import read_image_records

    return read_image_records(str(SAMPLE / "test.tfrecord"), limit=40)


def bad_data_output(tmp_path, train, test, *flags):
    """Writes `(images, labels)` pairs as TFRecords and trains on them;
    returns the output of the failed run."""
    paths = []
    for name, data in [("train", train), ("test", test)]:
        paths.append(tmp_path / f"{name}.tfrecord")
        if isinstance(data, bytes):
            paths[-1].write_bytes(data)
        else:
            write_image_records(paths[-1], *data, encode="png")
    output = run_script(
        "train_cifar.py",
        f"--data={paths[0]}",
        f"--test_data={paths[1]}",
        *TINY,
        "--batch_size=16",
        *flags,
        f"--output_dir={tmp_path / 'out'}",
        expect_returncode=1,
    )
    assert "Epoch 1/" not in output
    return output, paths


def test_train_cifar_on_cifar100_png_records(tmp_path):
    """--dataset=cifar100 on real CIFAR-100 images as PNG records: 100
    classes, the authors' classifier, CIFAR-100's normalization."""
    from keras_sgs.tfrecords import read_image_records

    images, labels = read_image_records(
        str(CIFAR100_DIR / "train-00000-of-00008.tfrecord"), limit=160
    )
    for name, part in [("train", slice(0, 128)), ("test", slice(128, 160))]:
        write_image_records(
            tmp_path / f"{name}.tfrecord",
            images[part],
            labels[part],
            encode="png",
        )
    output_dir = tmp_path / "out"
    run_script(
        "train_cifar.py",
        "--dataset=cifar100",
        f"--data={tmp_path / 'train.tfrecord'}",
        f"--test_data={tmp_path / 'test.tfrecord'}",
        "--method=sgs_mi",
        *TINY,
        f"--output_dir={output_dir}",
    )
    results = check_outputs(output_dir, "sgs_mi")
    assert results["num_classes"] == 100
    check_sgs_mi_refreshed(results, read_json(output_dir / "history.json"))
    model = keras.saving.load_model(output_dir / "model.keras")
    assert model.output_shape == (None, 100)
    assert model.get_layer("fc1").units == 512  # 4096 at width 1/8
    flags = read_json(output_dir / "run_flags.json")["flags"]
    assert (flags["dataset"], flags["head"]) == ("cifar100", "mlp")


def test_cifar10_records_as_cifar100_are_refused_before_training(tmp_path):
    output = run_script(
        "train_cifar.py",
        "--dataset=cifar100",
        f"--data={SAMPLE / 'train.tfrecord'}",
        f"--test_data={SAMPLE / 'test.tfrecord'}",
        *TINY,
        f"--output_dir={tmp_path}",
        expect_returncode=1,
    )
    assert "Epoch 1/" not in output
    assert (
        f"4000 images of '{SAMPLE / 'train.tfrecord'}' hold only 10 distinct "
        "labels (labels 0..9), where 4000 images of cifar100's 100 balanced "
        "classes show about 100"
    ) in output


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--dataset=cifar100"],
            "--dataset=cifar100 has no shipped sample: pass --data",
        ),
        (
            ["--dataset=cifar100", "--tfds_name=cifar10"],
            "--tfds_name must name the same data set as --dataset",
        ),
    ],
)
def test_dataset_flag_errors(flags, message, tmp_path):
    output = run_script(
        "train_cifar.py",
        *flags,
        *TINY,
        f"--output_dir={tmp_path}",
        expect_returncode=1,
    )
    assert message in output


def test_wrong_image_size_is_refused_before_training(sample_images, tmp_path):
    import tensorflow as tf

    images, labels = sample_images
    large = tf.cast(tf.image.resize(images, (64, 64)), tf.uint8).numpy()
    output, paths = bad_data_output(
        tmp_path, (large[:32], labels[:32]), (images[32:], labels[32:])
    )
    assert (
        f"--data file {paths[0]}: example 0 has a 64x64 image, not 32x32"
        in output
    )


def test_a_smaller_image_after_the_first_batch_is_refused(
    sample_images, tmp_path
):
    """Every CIFAR image is checked, not only the first batch."""
    import tensorflow as tf

    images, labels = sample_images
    train = list(images[:32])
    train[20] = tf.cast(tf.image.resize(images[20], (28, 28)), tf.uint8).numpy()
    output, paths = bad_data_output(
        tmp_path, (train, labels[:32]), (images[32:], labels[32:])
    )
    assert (
        f"--data file {paths[0]}: example 20 has a 28x28 image, not 32x32"
        in output
    )


def test_label_outside_num_classes_is_refused(sample_images, tmp_path):
    images, labels = sample_images
    labels = labels.copy()
    labels[35] = 10
    output, paths = bad_data_output(
        tmp_path, (images[:32], labels[:32]), (images[32:], labels[32:])
    )
    assert (
        f"--test_data file {paths[1]}: example 3 has label 10, outside [0, 10)"
    ) in output


def test_corrupt_test_file_is_named_before_training(sample_images, tmp_path):
    images, labels = sample_images
    output, paths = bad_data_output(
        tmp_path, (images[:32], labels[:32]), b"not a TFRecord file"
    )
    assert f"--test_data: {paths[1]} is not a readable TFRecord file" in output


# -- export ------------------------------------------------------------


@pytest.mark.parametrize(
    "method, int8_io", [("sgs_mi", True), ("repvgg", False)]
)
def test_export(method, int8_io, finished_run, tmp_path):
    """SavedModel and TFLite files of a finished run, with accuracies."""
    import tensorflow as tf

    shutil.copytree(finished_run(method)[0], tmp_path, dirs_exist_ok=True)
    output = run_script(
        "export.py",
        f"--run_dir={tmp_path}",
        "--representative_images=32",
        *["--int8_io"] * int8_io,
    )
    report = read_json(tmp_path / "export" / "export.json")
    assert f"{method}: test top-1 Keras" in output
    assert report["model_file"] == (
        "fused.keras" if method == "repvgg" else "model.keras"
    )
    assert report["test_examples"] == 1000
    accuracy = report["test_top1"]
    results = read_json(tmp_path / "results.json")
    test_key = "fused_test_accuracy" if method == "repvgg" else "test_accuracy"
    assert accuracy["keras"] == pytest.approx(results[test_key], abs=1e-6)
    assert accuracy["saved_model"] == accuracy["keras"]
    assert report["saved_model_max_logit_difference"] <= 1e-3
    # Float TFLite computes the same function (a prediction may flip on a
    # float32 tie); int8 stays a classifier of those images.
    assert abs(accuracy["tflite_float"] - accuracy["keras"]) <= 0.002
    assert 0.0 <= accuracy["tflite_int8"] <= 1.0
    assert report["int8_drop"] == pytest.approx(
        accuracy["tflite_float"] - accuracy["tflite_int8"]
    )
    interpreter = tf.lite.Interpreter(
        model_path=str(tmp_path / "export" / "model_int8.tflite")
    )
    dtype = interpreter.get_input_details()[0]["dtype"]
    assert dtype == (np.int8 if int8_io else np.float32)
    weights = [
        d
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8 and len(d["shape"]) == 4
    ]
    assert len(weights) >= 8  # at least one per conv kernel, and activations
    assert report["tflite_bytes"]["int8"] < report["tflite_bytes"]["float"] / 2
    reloaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    assert "serve" in reloaded.signatures or hasattr(reloaded, "serve")


def test_export_refuses_an_unfinished_run(stopped_run_files, tmp_path):
    stopped_run(tmp_path, stopped_run_files)
    output = run_script(
        "export.py", f"--run_dir={tmp_path}", expect_returncode=1
    )
    assert "is not a finished training run: it has no results.json" in output


@pytest.mark.parametrize(
    "dataset, method",
    [("cifar100", "sgs_mi"), ("cifar10", "sgs_constant"), ("cifar100", "acb")],
)
def test_train_cifar_builds_what_the_study_builds(dataset, method):
    """`train_cifar.py` and `benchmarks/accuracy.py` take the recipe from
    one place (`keras_sgs.recipes`): for the same data set, method, seed
    and number of steps they build the same backbone with the same initial
    weights, the same optimizer (SGD, cosine schedule, masks, coupled
    decay), the same MI refresh and the same augmentation (the example's
    `tf.data` map gives the recipe's augmentation, draw for draw). The
    front ends own their data: the study keeps the last partial batch of
    an epoch, the example's pipeline drops it."""
    process = subprocess.run(
        [sys.executable, str(TESTS / "recipe_builds_main.py"), dataset, method],
        env=dict(
            os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    built = json.loads(process.stdout)
    study, example = built["study"], built["example"]
    assert (
        set(study)
        == set(example)
        == {
            "backbone",
            "weights",
            "optimizer",
            "recipe",
            "refresh",
            "augmentation",
            "augmented",
        }
    )
    for part in study:
        assert study[part] == example[part], part
    # What was compared is the recipe's, and differs between methods.
    inner = study["optimizer"]["inner_optimizer"]["config"]
    assert (inner["momentum"], inner["nesterov"]) == (0.9, False)
    assert study["optimizer"]["coupled_weight_decay"] == 5e-4
    acnet = [[1.0, 2.0, 1.0], [2.0, 3.0, 2.0], [1.0, 2.0, 1.0]]
    assert (study["optimizer"]["masks"] == acnet) == (method == "sgs_constant")
    assert study["refresh"] == ([[5, 1, 5.0]] if method == "sgs_mi" else [])
    layers = [layer["class_name"] for layer in study["backbone"]["layers"]]
    assert ("ACBlock" in layers) == (method == "acb")
    assert [name for name, _ in study["augmentation"]] == [
        "RandomCropFlip",
        "Normalization",
        "Cutout",
    ]

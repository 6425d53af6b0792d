"""`benchmarks/accuracy.py` and its CIFAR pipeline (`benchmarks/cifar.py`):
the augmentation layers against numpy, the CIFAR-100 records against the
published statistics, a smoke run of the study on CIFAR-100 on this
backend (without TensorFlow unless the backend is TensorFlow), its table,
its errors on bad input, and the GPU scripts on JAX without TensorFlow."""

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import CIFAR10_DIR
from conftest import CIFAR100_DIR

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402
import cifar  # noqa: E402
import paired  # noqa: E402
from epochs_that_fit import epochs_that_fit  # noqa: E402

from keras_sgs import recipes  # noqa: E402

CIFAR100_TRAIN = str(CIFAR100_DIR / "train-00000-of-00008.tfrecord")
CIFAR100_TEST = str(CIFAR100_DIR / "test-00000-of-00002.tfrecord")

SMOKE = [
    "--epochs=3",
    "--train_images=256",
    "--test_images=200",
    "--width=0.125",
    "--seeds=0",
    "--refresh_every=1",
]


def run_study(*args, expect_returncode=0):
    """Runs the study in a subprocess on this backend; on JAX and PyTorch a
    `tensorflow` package that refuses to import comes first on the path."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    if BACKEND != "tensorflow":
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "tests" / "no_tensorflow"), env.get("PYTHONPATH", "")]
        )
    process = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = process.stdout + process.stderr
    assert process.returncode == expect_returncode, output[-5000:]
    return output


def test_cifar100_records_have_the_published_statistics_and_fine_labels():
    """The shared PNG records decode without TensorFlow to CIFAR-100's
    pixels: one shard's channel statistics are those of `DATASETS`, which
    are CIFAR-100's and not CIFAR-10's; every fine label occurs."""
    images, labels = cifar.load_split(CIFAR100_TRAIN, "train")
    assert images.shape == (6250, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels) == set(range(100))
    pixels = images.reshape(-1, 3) / 255.0
    stats = recipes.DATASETS["cifar100"]
    np.testing.assert_allclose(pixels.mean(0), stats.mean, atol=0.005)
    np.testing.assert_allclose(pixels.std(0), stats.std, atol=0.005)
    assert recipes.DATASETS["cifar100"].num_classes == 100


# The study runs on TensorFlow (the CPU tables) and on JAX (the GPU
# machine); the library itself is tested on every backend elsewhere.
study_backends = pytest.mark.skipif(
    BACKEND not in ("tensorflow", "jax"),
    reason="the study runs on TensorFlow (CPU) and JAX (GPU)",
)


@study_backends
def test_smoke_run_on_cifar100_writes_runs_and_table(tmp_path):
    table = tmp_path / "accuracy.md"
    output = run_study(
        *SMOKE,
        "--dataset=cifar100",
        f"--data={CIFAR100_TRAIN}",
        f"--test_data={CIFAR100_TEST}",
        "--methods=baseline,sgs_mi",
        "--parallel=2",
        f"--output={table}",
    )
    assert "cifar100: vgg11 (mlp head, width 0.125), 3 epochs" in output
    assert "vgg11 sgs_mi seed 0: test top-1" in output
    text = table.read_text()
    assert f"KERAS_BACKEND={BACKEND}" in text
    assert "256 training / 200 test images of cifar100" in text
    assert "| baseline | 1 |" in text and "| sgs_mi | 1 |" in text
    assert "70.8 ± 0.1" in text  # the paper's reference
    for method in ("baseline", "sgs_mi"):
        with open(tmp_path / "accuracy" / f"vgg11_{method}_seed0.json") as f:
            run = json.load(f)
        assert run["dataset"] == "cifar100" and run["num_classes"] == 100
        assert run["head"] == "mlp"
        assert run["device"].startswith(BACKEND)
        assert 0.0 <= run["test_top1"] <= 1.0
        assert len(run["train_loss"]) == 3 and np.all(
            np.isfinite(run["train_loss"])
        )
        assert run["train_images"] == 256 and run["test_images"] == 200
        assert run["seconds_per_epoch"] > 0
        assert run["command"] == text.splitlines()[0]  # one for both runs
    # The warm-up epoch trains with ones, each later one refreshes.
    assert len(run["mi_refresh_seconds"]) == 2
    assert all(s > 0 for s in run["mi_refresh_seconds"])
    assert "| sgs_mi | 1 | " in text and "% |" in text  # warm refresh / epoch
    masks = np.array(list(run["masks"].values()))
    assert masks.shape == (8, 3, 3) and not np.allclose(masks, 1)
    np.testing.assert_allclose(masks.mean(axis=(1, 2)), 1, rtol=1e-5)
    assert "Learned 3x3 masks (8: layers x runs): centre largest in" in text
    # The pairing: the warm-up epoch trains both with ones masks, from the
    # same initial weights on the same batches, so its logs are identical.
    with open(tmp_path / "accuracy" / "vgg11_baseline_seed0.json") as f:
        baseline = json.load(f)
    assert baseline["train_loss"][0] == run["train_loss"][0]
    assert baseline["train_top1"][0] == run["train_top1"][0]
    assert baseline["train_loss"][1] != run["train_loss"][1]  # masks differ
    assert "| sgs_mi - baseline | 1 | " in text
    # The table again from the runs' files, under the training command.
    table.write_text(text.replace("| sgs_mi |", "| edited |"))
    accuracy.retabulate(str(table))
    again = table.read_text().splitlines()
    assert again[0] == text.splitlines()[0] and "--parallel=2" in again[0]
    assert again[1].startswith("Tabulated again by `python3 ")
    assert "\n".join(again[3:]) == "\n".join(text.splitlines()[2:])


def fake_run(method, seed, top1, seconds=10.0, refreshes=(), **settings):
    """A finished run's dict as `accuracy.py` writes it."""
    run = {
        "dataset": "cifar100",
        "model": "vgg11",
        "head": "mlp",
        "width": 1.0,
        "epochs": 200,
        "train_images": 50000,
        "test_images": 10000,
        "device": "jax, NVIDIA H100",
        "method": method,
        "seed": seed,
        "test_top1": top1,
        "seconds_per_epoch": seconds,
        "mi_refresh_seconds": list(refreshes),
        "finished": True,
    }
    if method in accuracy.BRANCHED:
        run["fused_test_top1"] = top1 - 0.001
    return dict(run, **settings)


def test_table_sets_each_method_against_the_baseline():
    results = [
        fake_run("baseline", 0, 0.70, 10.0),
        fake_run("baseline", 1, 0.72, 12.0),
        fake_run("sgs_mi", 0, 0.73, 10.4, (3.0, 0.5, 0.7)),
        fake_run("sgs_mi", 1, 0.74, 11.2, (2.0, 0.6, 0.8)),
    ]
    lines = accuracy.table(results, 50000, 10000).splitlines()
    assert "of cifar100" in lines[0] and "(mlp head, width 1.0)" in lines[0]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in lines[4:8]}
    # Means 71.00 and 73.50; medians 11.0 and 10.8 s.
    assert rows["| baseline"][2:5] == [
        "71.00 ± 1.41",
        "70.00 (0), 72.00 (1)",
        "",
    ]
    assert rows["| sgs_mi"][2:4] == ["73.50 ± 0.71", "73.00 (0), 74.00 (1)"]
    assert rows["| sgs_mi"][5:7] == ["10.80", "0.982"]
    # First refreshes 3.0, 2.0 (median 2.5); warm 0.5-0.8 (median 0.65).
    assert rows["| sgs_mi"][7:10] == ["3", "2.50", "0.65"]
    assert "| paper: baseline |  | 70.8 ± 0.1 |" in lines[6]
    assert "| paper: SGS |  | 73.2 ± 0.1 |" in lines[7]
    # Paired: +3 and +2 points, mean 2.5, std 0.707, t(0.975, 1) = 12.706:
    # 2.5 -+ 12.706 * 0.707 / sqrt(2) = 2.5 -+ 6.35.
    assert lines[-1] == (
        "| sgs_mi - baseline | 2 | +3.00 (0), +2.00 (1) | +2.50 | 0.71 "
        "| [-3.85, +8.85] |"
    )


def test_paired_comparisons_use_shared_seeds_and_fused_top1():
    results = (
        [fake_run("baseline", s, v) for s, v in enumerate([0.70, 0.72, 0.71])]
        + [fake_run("sgs_mi", s, v) for s, v in enumerate([0.72, 0.73, 0.74])]
        + [fake_run("acb", s, v) for s, v in [(0, 0.731), (1, 0.741)]]
    )
    text = accuracy.table(results, 50000, 10000)
    rows = {
        line.split(" | ")[0]: line
        for line in text.splitlines()
        if " - " in line.split(" | ")[0]
    }
    # sgs_mi - baseline: +2, +1, +3 -> mean 2, std 1, t(0.975, 2) = 4.3027.
    assert rows["| sgs_mi - baseline"] == (
        "| sgs_mi - baseline | 3 | +2.00 (0), +1.00 (1), +3.00 (2) | +2.00 "
        "| 1.00 | [-0.48, +4.48] |"
    )
    # acb against the baseline on seeds 0 and 1 only, its fused top-1
    # (0.730, 0.740): +3 and +2.
    assert rows["| acb - baseline"].startswith(
        "| acb - baseline | 2 | +3.00 (0), +2.00 (1) | +2.50 |"
    )
    assert rows["| sgs_mi - acb"].startswith(
        "| sgs_mi - acb | 2 | -1.00 (0), -1.00 (1) | -1.00 | 0.00 |"
    )
    assert "| sgs_constant" not in text and "| repvgg" not in text


def test_paired_statistics_against_scipy():
    from scipy import stats

    for df in range(1, 15):
        for t in (0.2, 1.0, 2.2, 6.0):
            expected = stats.t.cdf(t, df) - stats.t.cdf(-t, df)
            assert paired.t_cdf_two_sided(t, df) == pytest.approx(
                expected, abs=1e-12
            )
        assert paired.t_quantile(0.95, df) == pytest.approx(
            stats.t.ppf(0.975, df), rel=1e-10
        )
    d = paired.paired_difference(
        {0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}, {0: 0.0, 1: 0.0, 2: 0.0}
    )
    assert d["seeds"] == [0, 1, 2] and d["differences"] == [1.0, 2.0, 3.0]
    assert (d["mean"], d["std"]) == (2.0, 1.0)
    half = stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert (d["low"], d["high"]) == pytest.approx((2 - half, 2 + half))
    one = paired.paired_difference({5: 0.5}, {5: 0.25})
    assert one["mean"] == 0.25 and one["std"] is one["low"] is None
    assert paired.paired_difference({0: 1.0}, {1: 1.0}) is None
    with pytest.raises(ValueError, match="Received: df=0"):
        paired.t_cdf_two_sided(1.0, 0)


def test_retabulate_joins_the_commands_and_runs_of_one_study(tmp_path):
    """A study trained by two commands (more seeds, then other methods):
    the table holds every finished run and both commands, the second
    read from the runs' files (as for runs trained in another checkout
    and copied in); a run of other settings in the folder is refused,
    naming its file."""
    runs_dir = tmp_path / "study"
    runs_dir.mkdir()
    runs = (
        [fake_run("baseline", s, 0.70 + s / 100) for s in range(3)]
        + [fake_run("sgs_mi", s, 0.71 + s / 100) for s in range(3)]
        + [
            fake_run("repvgg", s, 0.75, command="Command: `two`")
            for s in (0, 1)
        ]
    )
    runs.append(dict(fake_run("acb", 0, 0.9), finished=False))  # cut short
    for r in runs:
        with open(
            runs_dir / f"vgg11_{r['method']}_seed{r['seed']}.json", "w"
        ) as f:
            json.dump(r, f)
    table = tmp_path / "study.md"
    table.write_text("Command: `one`\nTabulated again by `x`.\n\nold\n")
    accuracy.write_study_table(str(table))
    lines = table.read_text().splitlines()
    assert lines[:2] == ["Command: `one`", "Command: `two`"]
    text = table.read_text()
    assert "| baseline | 3 |" in text and "| sgs_mi | 3 |" in text
    assert "| repvgg | 2 |" in text and "| acb |" not in text
    assert "| repvgg - baseline | 2 | +4.90 (0), +3.90 (1) |" in text
    assert "| sgs_mi - repvgg | 2 | -3.90 (0), -2.90 (1) |" in text
    accuracy.write_study_table(str(table), tabulated_by="Tabulated again.")
    assert table.read_text().splitlines()[:3] == [
        "Command: `one`",
        "Command: `two`",
        "Tabulated again.",
    ]
    with open(runs_dir / "vgg11_baseline_seed9.json", "w") as f:
        json.dump(fake_run("baseline", 9, 0.7, epochs=20), f)
    with pytest.raises(
        accuracy.app.UsageError,
        match=r"vgg11_baseline_seed9.json is not a run of the study .* "
        r"epochs=20 \(not 200\)",
    ):
        accuracy.retabulate(str(table))


def test_mask_pattern_against_the_papers_figure():
    paper_like = [[0.5, 0.9, 0.5], [0.9, 4.4, 0.9], [0.5, 0.9, 0.5]]
    corner_heavy = [[1.2, 0.5, 1.0], [0.5, 3.0, 0.5], [1.0, 0.5, 0.8]]
    runs = [
        {"masks": {"conv1": paper_like, "conv2": corner_heavy}},
        {"masks": {"conv1": paper_like, "stem": [[1.0]]}},  # not 3x3
    ]
    assert accuracy.mask_pattern(runs) == (
        "Learned 3x3 masks (3: layers x runs): centre largest in 3, every "
        "cross value above every corner in 2; mean mask [[0.73, 0.77, 0.67], "
        "[0.77, 3.93, 0.77], [0.67, 0.77, 0.6]]."
    )
    assert accuracy.mask_pattern([{"masks": {}}]) == ""


def test_epochs_that_fit_from_a_timed_calibration():
    # 2 epochs of the slowest run: 5 s then 3 s steady. The calibration
    # took 40 s: 34 s fixed. 334 s left: (334 - 34) * 0.95 / 3 = 95.
    runs = [{"epoch_seconds": [5.0, 3.0]}, {"epoch_seconds": [4.0, 2.5]}]
    assert epochs_that_fit(runs, 40.0, 334.0, 200) == 95
    assert epochs_that_fit(runs, 40.0, 334.0, 60) == 60
    assert epochs_that_fit(runs, 40.0, 20.0, 200) == 1
    with pytest.raises(ValueError, match="at least 2 epochs"):
        epochs_that_fit([{"epoch_seconds": [5.0]}], 40.0, 334.0, 200)


def jpeg_npz(path, images, labels=None):
    """The compact format of `gpu-wheels.sh --data`, both splits; `images`
    may differ in size."""
    from PIL import Image

    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    arrays = {}
    for split in ("train", "test"):
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}_offsets"] = offsets.astype(np.int64)
        arrays[f"{split}_labels"] = (
            np.arange(len(images)) % 10 if labels is None else labels
        )
    np.savez(path, **arrays)


def test_reads_the_compact_npz(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3))
    jpeg_npz(tmp_path / "cifar.npz", images.astype(np.uint8))
    loaded, labels = cifar.load_split(str(tmp_path / "cifar.npz"), "test", 4)
    assert loaded.shape == (4, 32, 32, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    # JPEG is lossy: close to the originals, not equal.
    assert np.abs(loaded.astype(int) - images[:4]).mean() < 60


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods=baseline,sgd"], "--methods must list some of"),
        (
            ["--methods=baseline", "--seeds=0,1", "--parallel=3"],
            "--parallel must be at most the number of runs (2",
        ),
        (["--data=/nonexistent/*.tfrecord"], "matches no file"),
        (
            ["--data={npz64}"],
            "must be 32x32 RGB. Received: images of shape (64, 64, 3)",
        ),
        (["--test_data={bad}"], "bad.tfrecord is not a TFRecord file"),
        (["--data={npz_labels}"], "labels of"),
        (
            ["--data={npz_sizes}"],
            "The train images of '{npz_sizes}' differ in size: [(28, 28, 3), "
            "(32, 32, 3)]",
        ),
        (
            [
                "--dataset=cifar100",
                "--data={cifar10}",
                "--train_images=512",
            ],
            "The train labels do not fit --dataset=cifar100: 512 images of "
            "'{cifar10}' hold only 10 distinct labels",
        ),
    ],
)
@pytest.mark.skipif(
    BACKEND != "jax",
    reason="refused before any training, by numpy code: checked once, on "
    "the GPU machine's backend",
)
def test_bad_input_fails_before_training(tmp_path, args, message):
    jpeg_npz(tmp_path / "64.npz", np.zeros((3, 64, 64, 3), np.uint8))
    jpeg_npz(
        tmp_path / "labels.npz",
        np.zeros((12, 32, 32, 3), np.uint8),
        labels=np.arange(12),
    )
    jpeg_npz(
        tmp_path / "sizes.npz",
        [np.zeros((32, 32, 3), np.uint8)] * 2
        + [np.zeros((28, 28, 3), np.uint8)],
    )
    (tmp_path / "bad.tfrecord").write_bytes(b"not a record file")
    names = dict(
        npz64=tmp_path / "64.npz",
        bad=tmp_path / "bad.tfrecord",
        npz_labels=tmp_path / "labels.npz",
        npz_sizes=tmp_path / "sizes.npz",
        cifar10=CIFAR10_DIR / "train-00000-of-00008.tfrecord",
    )
    args = [a.format(**names) for a in args]
    output = run_study(
        *SMOKE,
        *args,
        f"--output={tmp_path / 'accuracy.md'}",
        expect_returncode=1,
    )
    assert message.format(**names) in output
    assert not (tmp_path / "accuracy").exists()


def run_gpu_script(name, tmp_path, **env):
    """Runs `benchmarks/<name>` as on the GPU machine (JAX, TensorFlow
    hidden) with `env` added; returns its `$OUT` folder."""
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO / "tests" / "no_tensorflow"),
        OUT=str(tmp_path / "out"),
        **env,
    )
    process = subprocess.run(
        [str(REPO / "benchmarks" / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, (process.stdout + process.stderr)[-5000:]
    out = tmp_path / "out"
    log = (out / "log.txt").read_text()
    assert "TensorFlow is not installed here" not in log
    return out


@pytest.mark.skipif(BACKEND != "jax", reason="the GPU machine runs JAX")
def test_gpu_script_runs_without_tensorflow(tmp_path):
    """`benchmarks/gpu_run.sh` on tiny settings: a broken script would
    waste the GPU's time."""
    from keras_sgs.tfrecords import read_image_records

    images, _ = read_image_records(
        str(CIFAR10_DIR / "train-00000-of-00008.tfrecord"), limit=300
    )
    jpeg_npz(tmp_path / "cifar.npz", images)
    out = run_gpu_script(
        "gpu_run.sh",
        tmp_path,
        DATA=str(tmp_path / "cifar.npz"),
        EPOCHS="2",
        ACCURACY_ARGS=" ".join(SMOKE[1:] + ["--seeds=0", "--parallel=2"]),
        # One model is enough to show the script runs (each model compiles
        # its six variants).
        STEP_ARGS="--models=resnet18 --width=0.125 --batch_size=16 --steps=2 "
        "--rounds=2",
        MI_ARGS="--images=32 --repeats=1",
    )
    step_overhead = (out / "step_overhead.md").read_text()
    assert "| resnet18 | RepVGG branches |" in step_overhead
    assert "| vgg16 | 13 |" in (out / "mi_refresh.md").read_text()
    assert "| sgs_mi | 1 |" in (out / "accuracy.md").read_text()
    with tarfile.open(out / "accuracy_runs.tgz") as archive:
        assert "accuracy/vgg11_sgs_mi_seed0.json" in archive.getnames()


@pytest.mark.skipif(BACKEND != "jax", reason="the GPU machine runs JAX")
def test_cifar100_gpu_script_calibrates_and_runs_without_tensorflow(
    tmp_path,
):
    """`benchmarks/gpu_run_cifar100.sh` on tiny settings: the timed
    calibration, the epochs it fits, the study."""
    from keras_sgs.tfrecords import read_image_records

    images, labels = read_image_records(CIFAR100_TRAIN, limit=300)
    jpeg_npz(tmp_path / "cifar100.npz", images, labels)
    out = run_gpu_script(
        "gpu_run_cifar100.sh",
        tmp_path,
        DATA=str(tmp_path / "cifar100.npz"),
        METHODS="baseline",
        SEEDS="0",
        MAX_EPOCHS="2",
        ACCURACY_ARGS="--train_images=256 --test_images=100 --width=0.125",
    )
    assert "s left: 2 epochs" in (out / "log.txt").read_text()  # capped
    text = (out / "accuracy.md").read_text()
    assert "--dataset=cifar100" in text and "--epochs=2" in text
    assert "vgg11 (mlp head, width 0.125), 2 epochs" in text
    with tarfile.open(out / "accuracy_runs.tgz") as archive:
        assert "accuracy/vgg11_baseline_seed0.json" in archive.getnames()


def test_a_run_writes_its_progress_every_epoch(tmp_path):
    import accuracy

    rng = np.random.default_rng(4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        "sgd", "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    path = str(tmp_path / "run.json")
    written = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with open(path) as f:
                written.append(json.load(f))

    run_log = accuracy.RunLog({"method": "baseline", "finished": False}, path)
    model.fit(
        rng.random((32, 4)),
        rng.integers(0, 3, 32),
        epochs=2,
        verbose=0,
        callbacks=[run_log, Spy()],
    )
    assert [len(w["train_loss"]) for w in written] == [1, 2]
    assert not written[-1]["finished"] and written[-1]["seconds_per_epoch"] > 0


def committed_study_table(folder, tmp_path):
    """The table of the committed runs in `benchmarks/results/<folder>`,
    written again (in `tmp_path`)."""
    import shutil

    runs = REPO / "benchmarks" / "results" / folder
    shutil.copytree(runs, tmp_path / "study")
    table = tmp_path / "study.md"
    accuracy.write_study_table(str(table))
    return table.read_text()


def committed_top1(folder, method, seed):
    """A committed run's deployed test top-1 (fused where branched)."""
    path = REPO / "benchmarks" / "results" / folder
    with open(path / f"vgg11_{method}_seed{seed}.json") as f:
        return accuracy.deployed_top1(json.load(f))


def assert_rows_in_table_and_readme(table, readme, *rows):
    """Each `(table_row, readme_cell)`: the row is in the rebuilt table and
    the cell quoting it is in the README."""
    for row, readme_cell in rows:
        assert row in table and readme_cell in readme, row


def test_the_committed_gpu_study_gives_the_readme_numbers(tmp_path):
    """The README's CIFAR-100 GPU rows come from the committed runs: the
    table written again from those files holds them."""
    text = committed_study_table("gpu_cifar100/accuracy_12ep", tmp_path)
    readme = (REPO / "README.md").read_text()
    assert_rows_in_table_and_readme(
        text,
        readme,
        (
            "| sgs_mi - baseline | 3 | +0.22 (0), +1.24 (1), +0.92 (2) | "
            "+0.79 | 0.52 | [-0.50, +2.09] |",
            "+0.79 [-0.50, +2.09]",
        ),
        (
            "| repvgg - baseline | 3 | +6.97 (0), +7.37 (1), +7.23 (2) | "
            "+7.19 | 0.20 | [+6.69, +7.69] |",
            "+7.19 [+6.69, +7.69]",
        ),
        ("| baseline | 3 | 46.18 ± 0.28 |", "46.18 ± 0.28"),
        ("| sgs_mi | 3 | 46.98 ± 0.29 |", "46.98 ± 0.29"),
    )
    # The ACB runs stopped after 11 of 12 epochs are not in the table.
    assert "| acb |" not in text


def test_the_committed_cpu_study_gives_the_readme_numbers(tmp_path):
    """The README's CIFAR-100 CPU rows come from the committed runs."""
    text = committed_study_table("cifar100_cpu", tmp_path)
    readme = (REPO / "README.md").read_text()
    assert_rows_in_table_and_readme(
        text,
        readme,
        ("| baseline | 5 | 46.14 ± 0.42 |", "| baseline | 46.14 ± 0.42 |"),
        ("| sgs_mi | 5 | 46.88 ± 0.48 |", "| SGS-MI | 46.88 ± 0.48 |"),
        ("| sgs_constant | 3 | 47.34 ± 0.39 |", "| 47.34 ± 0.39 |"),
        ("| acb | 3 | 49.22 ± 0.64 |", "| ACB, fused | 49.22 ± 0.64 |"),
        ("| repvgg | 3 | 50.85 ± 0.56 |", "| RepVGG, fused | 50.85 ± 0.56 |"),
        ("| +0.75 | 0.23 | [+0.47, +1.03] |", "+0.75 [+0.47, +1.03]"),
        ("| +1.22 | 0.18 | [+0.77, +1.66] |", "+1.22 [+0.77, +1.66]"),
        ("| +3.10 | 1.17 | [+0.19, +6.01] |", "+3.10 [+0.19, +6.01]"),
        ("| +4.73 | 1.00 | [+2.26, +7.21] |", "+4.73 [+2.26, +7.21]"),
        ("| -2.28 | 1.24 | [-5.35, +0.80] |", "-2.28 [-5.35, +0.80]"),
        ("| -3.91 | 1.02 | [-6.44, -1.38] |", "-3.91 [-6.44, -1.38]"),
        ("| -1.89 | 0.99 | [-4.36, +0.58] |", "-1.89 [-4.36, +0.58]"),
        ("| -0.39 | 0.28 | [-1.09, +0.31] |", "-0.39 [-1.09, +0.31]"),
    )
    sixty = committed_study_table("cifar100_cpu_60ep", tmp_path / "60ep")
    assert_rows_in_table_and_readme(
        sixty,
        readme,
        ("| baseline | 3 | 58.52 ± 0.16 |", "baseline reaches\n58.52 ± 0.16"),
        ("| sgs_mi | 3 | 59.17 ± 0.52 |", "SGS-MI 59.17 ± 0.52"),
        ("| +0.64 | 0.54 | [-0.71, +1.99] |", "paired +0.64 [-0.71, +1.99]"),
        ("| repvgg | 2 | 60.62 ± 0.01 |", "reaches 60.62 ± 0.01"),
        ("| +2.04 | 0.16 | [+0.64, +3.44] |", "+2.04\n[+0.64, +3.44]"),
        ("| -1.24 | 0.52 | [-5.88, +3.39] |", "-1.24 [-5.88, +3.39]"),
    )
    # What the README sets beside them: the same seeds at 20 epochs.
    for a, b, seeds, quoted in (
        ("sgs_mi", "baseline", (0, 1, 2), "+0.83\nfor the same seeds"),
        ("repvgg", "baseline", (0, 1), "+4.71 for the same seeds"),
        ("sgs_mi", "repvgg", (0, 1), "(it was -3.77)"),
    ):
        mean = np.mean(
            [committed_top1("cifar100_cpu", a, s) for s in seeds]
        ) - np.mean([committed_top1("cifar100_cpu", b, s) for s in seeds])
        assert f"{100 * mean:+.2f}" in quoted and quoted in readme, quoted

r"""Do the study and the example train the same thing? Runs
`benchmarks/accuracy.py` (the study's front end: numpy arrays, augmentation
inside the model) and `examples/train_cifar.py` (the user's: `tf.data`,
resume) on the CIFAR-10 sample shipped in `data/cifar10_sample`, with the
same method, epochs, width and seeds, and writes their test accuracies side
by side with the paired difference (example - study).

Both build the model, optimizer, schedule, masks and augmentation from
`keras_sgs.recipes` (`tests/test_examples.py` checks that they match), but
they draw batches and augmentation differently (a numpy permutation
against `tf.data`'s shuffle; the study keeps the last partial batch, the
example drops it), so a seed's two runs are not the same run. The question
is whether the example lands within the seed-to-seed noise of the study:
compare the difference's interval with the study's spread over seeds.

```sh
KERAS_BACKEND=tensorflow python3 benchmarks/front_ends.py --seeds=0,1,2 \
    --epochs=10 --output=benchmarks/results/front_ends.md
```
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import keras
from absl import app
from absl import flags
from common import device_description
from common import write_table
from paired import paired_difference

from keras_sgs import recipes

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "cifar10_sample"

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "sgs_mi", tuple(recipes.METHODS), "Method.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "One run per front end per seed.")
flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
flags.DEFINE_float("width", 0.25, "Channel multiplier of VGG-11.")
flags.DEFINE_string(
    "output",
    str(REPO / "benchmarks" / "results" / "front_ends.md"),
    "Markdown table.",
)


def run(command):
    """Runs `command` (a list) with this process's backend; raises with the
    end of its output when it fails."""
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    result = subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
        )


def study_accuracies(seeds, folder):
    """`{seed: test top-1}` of `benchmarks/accuracy.py` on the sample."""
    output = os.path.join(folder, "study.md")
    run(
        [
            "benchmarks/accuracy.py",
            "--dataset=cifar10",
            f"--data={SAMPLE / 'train.tfrecord'}",
            f"--test_data={SAMPLE / 'test.tfrecord'}",
            f"--methods={FLAGS.method}",
            f"--seeds={','.join(str(s) for s in seeds)}",
            f"--epochs={FLAGS.epochs}",
            f"--width={FLAGS.width}",
            f"--output={output}",
        ]
    )
    accuracies = {}
    for path in pathlib.Path(folder, "study").glob("*.json"):
        with open(path) as f:
            results = json.load(f)
        accuracies[results["seed"]] = results["test_top1"]
    return accuracies


def example_accuracy(seed, folder):
    """Test accuracy of `examples/train_cifar.py` on the sample (its
    default data)."""
    output_dir = os.path.join(folder, f"example_seed{seed}")
    run(
        [
            "examples/train_cifar.py",
            f"--method={FLAGS.method}",
            f"--seed={seed}",
            f"--epochs={FLAGS.epochs}",
            f"--width={FLAGS.width}",
            f"--output_dir={output_dir}",
        ]
    )
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)["test_accuracy"]


def table(study, example):
    """The accuracies per seed and the paired difference, in points."""

    def points(values):
        mean = statistics.mean(values.values()) * 100
        std = statistics.stdev(values.values()) * 100 if len(values) > 1 else 0
        return f"{mean:.2f} ± {std:.2f}"

    diff = paired_difference(example, study)
    lines = [
        f"Device: {device_description()}. vgg11 (linear head, width "
        f"{FLAGS.width}), {FLAGS.method}, {FLAGS.epochs} epochs on the "
        "CIFAR-10 sample (4000 training / 1000 test images); the recipe "
        "of keras_sgs.recipes.CIFAR.",
        "",
        "| front end | "
        + " | ".join(f"seed {s}" for s in sorted(study))
        + " | mean ± std |",
        "|---|" + "---|" * (len(study) + 1),
    ]
    for name, values in (
        ("benchmarks/accuracy.py", study),
        ("examples/train_cifar.py", example),
    ):
        cells = " | ".join(f"{values[s] * 100:.1f}" for s in sorted(values))
        lines.append(f"| {name} | {cells} | {points(values)} |")
    interval = (
        f"[{diff['low'] * 100:+.2f}, {diff['high'] * 100:+.2f}]"
        if diff["std"] is not None
        else "(one pair: none)"
    )
    lines += [
        "",
        f"Example - study, paired by seed: {diff['mean'] * 100:+.2f} points, "
        f"95% interval {interval}.",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    seeds = [int(s) for s in FLAGS.seeds]
    with tempfile.TemporaryDirectory() as folder:
        study = study_accuracies(seeds, folder)
        example = {seed: example_accuracy(seed, folder) for seed in seeds}
    write_table(FLAGS.output, table(study, example))


if __name__ == "__main__":
    app.run(main)

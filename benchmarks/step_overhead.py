"""Train-step cost of SGSWrapper against its inner optimizer and ACB branches.

One process, one model architecture (a VGG-style CIFAR net), one batch of
real CIFAR-10 images; the variants run interleaved (round-robin, several
rounds) so that machine noise hits them alike, and the median seconds per
step of each is compared with the inner optimizer alone:

- `SGD`: `keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)`;
- `SGSWrapper gradient` / `SGSWrapper update`: the same SGD wrapped, ACB mask;
- `ACB branches`: every 3x3 conv replaced by 3x3 + 1x3 + 3x1 convs, each with
  BatchNormalization, summed (ACNet), trained with the plain SGD.

    KERAS_BACKEND=tensorflow python benchmarks/step_overhead.py
"""

import os
import statistics
import time

from absl import app
from absl import flags

import keras
import numpy as np

import keras_sgs
from common import cifar10_images
from common import device_description
from common import write_table

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data", "../shared/data/cifar10/train-00000-of-00008.tfrecord",
    "TFRecords of real images (random images if the path does not exist).",
)
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 10, "Steps per variant per round.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_string("widths", "32,64,128,128", "Conv widths of the 4 stages.")
flags.DEFINE_string(
    "output", "benchmarks/results/step_overhead.md", "Markdown table path."
)

ACB = keras_sgs.mask_from_branches(
    (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
)


def conv_bn(x, filters, branched):
    if not branched:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        return keras.layers.BatchNormalization()(x)
    outputs = []
    for size in ((3, 3), (1, 3), (3, 1)):
        y = keras.layers.Conv2D(filters, size, padding="same", use_bias=False)(x)
        outputs.append(keras.layers.BatchNormalization()(y))
    return keras.layers.Add()(outputs)


def vgg(widths, branched):
    """Two 3x3 conv-BN-ReLU per stage, max-pool between stages."""
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, width in enumerate(widths):
        for _ in range(2):
            x = keras.layers.ReLU()(conv_bn(x, width, branched))
        if i < len(widths) - 1:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def sgd():
    return keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)


def variants(widths):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    specs = {
        "SGD": (False, sgd),
        "SGSWrapper gradient": (
            False, lambda: keras_sgs.SGSWrapper(sgd(), masks=ACB)
        ),
        "SGSWrapper update": (
            False,
            lambda: keras_sgs.SGSWrapper(sgd(), mode="update", masks=ACB),
        ),
        "ACB branches": (True, sgd),
    }
    models = {}
    for name, (branched, make_optimizer) in specs.items():
        keras.utils.set_random_seed(0)
        model = vgg(widths, branched)
        model.compile(make_optimizer(), loss)
        models[name] = model
    return models


def main(_):
    if os.path.exists(FLAGS.data):
        images, labels = cifar10_images(FLAGS.data, FLAGS.batch_size)
    else:
        rng = np.random.default_rng(0)
        images = rng.random((FLAGS.batch_size, 32, 32, 3), dtype="float32")
        labels = rng.integers(0, 10, FLAGS.batch_size)
    widths = [int(w) for w in FLAGS.widths.split(",")]
    models = variants(widths)
    for model in models.values():  # compile and warm up
        for _ in range(3):
            model.train_on_batch(images, labels)
    seconds = {name: [] for name in models}
    for _ in range(FLAGS.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                loss = model.train_on_batch(images, labels)
            float(loss)
            seconds[name].append((time.perf_counter() - start) / FLAGS.steps)
    base = statistics.median(seconds["SGD"])
    lines = [
        f"Backend and device: {device_description()}. VGG-style CIFAR net, widths {widths}, "
        f"batch {FLAGS.batch_size}, {FLAGS.rounds} interleaved rounds of "
        f"{FLAGS.steps} steps; median seconds per step.",
        "",
        "| variant | s/step (median) | min | max | ratio to SGD |",
        "|---|---|---|---|---|",
    ]
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:.4f} | {min(values):.4f} | "
            f"{max(values):.4f} | {median / base:.3f}x |"
        )
    write_table(FLAGS.output, "\n".join(lines))


if __name__ == "__main__":
    app.run(main)

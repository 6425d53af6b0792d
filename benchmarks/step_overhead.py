"""Train-step cost of SGSWrapper against its inner optimizer and branches.

One process, for each of `--models` (CIFAR models of `keras_sgs.models`;
by default a narrow VGG-11), one batch of real CIFAR-10 images; the
variants run interleaved (round-robin, several rounds) so that machine
noise hits them alike, and the median seconds per step of each is compared
with the inner optimizer alone:

- `SGD`: the recipe's SGD (`keras_sgs.recipes.CIFAR`: learning rate,
  momentum) with its weight decay as Keras's decoupled `weight_decay`;
- `SGSWrapper gradient` / `SGSWrapper update`: the same SGD wrapped, ACB mask;
- `SGSWrapper, coupled decay`: the accuracy study's optimizer, the SGD
  without decay in `SGSWrapper(coupled_weight_decay=...)`, ACB mask;
- `ACB branches`: every 3x3 conv-BN replaced by a `keras_sgs.reparam.ACBlock`
  (3x3 + 1x3 + 3x1 convs, each with BatchNormalization, summed: ACNet),
  trained with the plain SGD;
- `RepVGG branches`: every 3x3 conv-BN a `keras_sgs.reparam.RepVGGBlock`
  (3x3 + 1x1 + identity, each with BatchNormalization), plain SGD.

    KERAS_BACKEND=tensorflow python benchmarks/step_overhead.py
    # the CIFAR-100 study's model and batch (benchmarks/accuracy.py):
    KERAS_BACKEND=tensorflow python benchmarks/step_overhead.py \
        --head=mlp --num_classes=100 --batch_size=128
    # the paper's shapes, e.g. on a GPU:
    KERAS_BACKEND=jax python benchmarks/step_overhead.py \
        --models=vgg16,resnet18 --width=1 --batch_size=128
"""

import os
import statistics
import time

import keras
import numpy as np
from absl import app
from absl import flags
from common import cifar10_images
from common import device_description
from common import write_table

import keras_sgs
from keras_sgs import recipes

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data",
    "../shared/data/cifar10/train-00000-of-00008.tfrecord",
    "Real images: TFRecords or the compact .npz (random images if the path "
    "does not exist).",
)
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 10, "Steps per variant per round.")
flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
flags.DEFINE_list(
    "models", ["vgg11"], "CIFAR keras_sgs.models.build_model names."
)
flags.DEFINE_float("width", 0.25, "Channel multiplier of the model.")
flags.DEFINE_integer("num_classes", 10, "Classes of the model's head.")
flags.DEFINE_enum(
    "head",
    "linear",
    ["linear", "mlp"],
    "VGG classifier: one Dense, or the CIFAR-100 study's three (`mlp`).",
)
flags.DEFINE_string(
    "output", "benchmarks/results/step_overhead.md", "Markdown table path."
)

ACB = keras_sgs.mask_from_branches((3, 3), recipes.ACNET_BRANCHES)
RECIPE = recipes.CIFAR


def sgd(weight_decay=RECIPE.weight_decay):
    return keras.optimizers.SGD(
        RECIPE.learning_rate,
        momentum=RECIPE.momentum,
        weight_decay=weight_decay,
    )


def variants(name):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    specs = {
        "SGD": ("plain", sgd),
        "SGSWrapper gradient": (
            "plain",
            lambda: keras_sgs.SGSWrapper(sgd(), masks=ACB),
        ),
        "SGSWrapper update": (
            "plain",
            lambda: keras_sgs.SGSWrapper(sgd(), mode="update", masks=ACB),
        ),
        "SGSWrapper, coupled decay": (
            "plain",
            lambda: keras_sgs.SGSWrapper(
                sgd(weight_decay=None),
                masks=ACB,
                coupled_weight_decay=RECIPE.weight_decay,
            ),
        ),
        "ACB branches": ("acb", sgd),
        "RepVGG branches": ("repvgg", sgd),
    }
    models = {}
    for variant, (conv_type, make_optimizer) in specs.items():
        keras.utils.set_random_seed(0)
        model = keras_sgs.models.build_model(
            name,
            FLAGS.num_classes,
            conv_type,
            width=FLAGS.width,
            head=FLAGS.head if name.startswith("vgg") else "linear",
        )
        model.compile(make_optimizer(), loss)
        models[variant] = model
    return models


def seconds_per_step(models, images, labels):
    """`{variant: [seconds per step of each round]}`, interleaved."""
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
    return seconds


def main(_):
    source = "CIFAR-10 images"
    if os.path.exists(FLAGS.data):
        images, labels = cifar10_images(FLAGS.data, FLAGS.batch_size)
    else:
        source = f"random images ({FLAGS.data} not found)"
        rng = np.random.default_rng(0)
        images = rng.random((FLAGS.batch_size, 32, 32, 3), dtype="float32")
        labels = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size)
    lines = [
        f"Backend and device: {device_description()}; {source}. CIFAR "
        f"models ({FLAGS.head} head on VGGs, {FLAGS.num_classes} classes), "
        f"width {FLAGS.width}, batch {FLAGS.batch_size}, "
        f"{FLAGS.rounds} interleaved rounds of {FLAGS.steps} steps; median "
        "seconds per step.",
        "",
        "| model | variant | s/step (median) | min | max | ratio to SGD |",
        "|---|---|---|---|---|---|",
    ]
    for name in FLAGS.models:
        seconds = seconds_per_step(variants(name), images, labels)
        base = statistics.median(seconds["SGD"])
        for variant, values in seconds.items():
            median = statistics.median(values)
            lines.append(
                f"| {name} | {variant} | {median:.4f} | {min(values):.4f} | "
                f"{max(values):.4f} | {median / base:.3f}x |"
            )
    write_table(FLAGS.output, "\n".join(lines))


if __name__ == "__main__":
    app.run(main)

"""What the benchmarks share: real images, the device line, the table file."""

import os
import sys

import keras
from cifar import load_split


def cifar10_images(source, count):
    """`count` real training images as float32 in [0, 1], and their labels,
    from a TFRecord glob or the compact `.npz` (see `cifar.load_split`)."""
    images, labels = load_split(source, "train", count)
    return images.astype("float32") / 255.0, labels


def device_description():
    """The Keras backend and the device it computes on."""
    backend = keras.backend.backend()
    cpu = f"CPU ({os.cpu_count()} cores)"
    if backend == "jax":
        import jax

        device = str(jax.devices()[0].device_kind)
    elif backend == "torch":
        import torch

        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else cpu
        )
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = gpus[0].name if gpus else cpu
    return f"{backend}, {device}"


def command_line():
    """`Command: `KERAS_BACKEND=... python3 script flags...``: how this
    process was started, for the top of a results table."""
    command = " ".join(["python3", os.path.relpath(sys.argv[0])] + sys.argv[1:])
    return f"Command: `KERAS_BACKEND={keras.backend.backend()} {command}`"


def write_table(path, table):
    """Prints `table` and writes it to `path` under the command, flags
    included, that made it."""
    print(table)
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{command_line()}\n\n{table}\n")

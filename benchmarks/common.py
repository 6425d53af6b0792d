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
    if keras.backend.backend() == "jax":
        import jax

        device = str(jax.devices()[0].device_kind)
    else:
        device = f"CPU ({os.cpu_count()} cores)"
    return f"{keras.backend.backend()}, {device}"


def write_table(path, table):
    """Prints `table` and writes it to `path` under the command that made it."""
    print(table)
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    script = os.path.relpath(sys.argv[0])
    with open(path, "w") as f:
        f.write(
            f"Command: `KERAS_BACKEND={keras.backend.backend()} python "
            f"{script}`\n\n{table}\n"
        )

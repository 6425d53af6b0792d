"""CIFAR-10 and CIFAR-100 for the accuracy study, on any Keras backend,
without TensorFlow.

- `DATASETS`: each data set's classes and channel statistics.
- `load_split`: images as uint8 numpy arrays, from TFRecords (read with
  `keras_sgs.tfrecords`; JPEG or PNG) or from the compact
  `<dataset>_jpeg.npz` that `../shared/tools/gpu-wheels.sh --data` writes
  (JPEG bytes, offsets, labels; decoded with Pillow). The labels are the
  records' `image/class/label` (CIFAR-100's fine labels).
- `check_labels`: the labels fit the data set (in range, and not another
  data set's).
- `RandomCropFlip` and `Cutout`: the authors' augmentation (random crop of
  the image padded by 4, horizontal flip, cutout 16) as Keras layers, one
  random draw per image, so that it runs inside the compiled train step.
- `training_model`: uint8 images -> augmentation (training only) ->
  per-channel normalization -> one of `keras_sgs.models`.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_sgs.tfrecords import decode_image
from keras_sgs.tfrecords import read_image_records

IMAGE_SHAPE = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A CIFAR data set: its classes and its training images' per-channel
    mean and standard deviation (in [0, 1] units, as published)."""

    num_classes: int
    mean: tuple
    std: tuple


DATASETS = {
    "cifar10": Dataset(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Dataset(
        100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


def load_split(source, split, limit=None):
    """Reads one split of CIFAR-style images.

    Args:
        source: str. A TFRecord glob (`tf.train.Example`s with
            `image/encoded` and `image/class/label`), or a `.npz` file with
            `<split>_bytes`, `<split>_offsets` and `<split>_labels` (the
            compact file of `gpu-wheels.sh --data`).
        split: `"train"` or `"test"` (selects the arrays of a `.npz`).
        limit: int or `None`. Keep the first `limit` images.

    Returns:
        `(images, labels)`: uint8 `(N, 32, 32, 3)` and int64 `(N,)`.

    Raises:
        ValueError: nothing to read, an unreadable file, or images that are
            not 32x32 RGB.
    """
    if source.endswith(".npz"):
        images, labels = _read_jpeg_npz(source, split, limit)
    else:
        images, labels = read_image_records(source, limit)
    if len(images) == 0:
        raise ValueError(f"{source!r} holds no image.")
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"The images of {source!r} must be 32x32 RGB. Received: images "
            f"of shape {images.shape[1:]}"
        )
    return images, labels


def _read_jpeg_npz(path, split, limit):
    try:
        with np.load(path) as arrays:
            data = arrays[f"{split}_bytes"]
            offsets = arrays[f"{split}_offsets"]
            labels = arrays[f"{split}_labels"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"{path!r} is not a compact CIFAR file with {split}_bytes, "
            f"{split}_offsets and {split}_labels: {error}"
        ) from None
    count = len(labels) if limit is None else min(limit, len(labels))
    images = []
    for i in range(count):
        images.append(decode_image(data[offsets[i] : offsets[i + 1]].tobytes()))
    if not images:
        return np.zeros((0,) + IMAGE_SHAPE, np.uint8), labels[:0]
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise ValueError(
            f"The {split} images of {path!r} differ in size: {shapes}"
        )
    return np.stack(images), labels[:count].astype(np.int64)


def check_labels(labels, dataset, source):
    """Raises `ValueError` unless `labels` fit `dataset`: every label in
    `[0, num_classes)`, and at least half the distinct labels that as many
    draws from the data set's balanced classes show on average,
    `C * (1 - (1 - 1/C) ** n)` (the records are shuffled). That tells
    CIFAR-10 records given as CIFAR-100 from 16 images on (about 99
    classes expected in 512 images, 10 seen).

    Args:
        labels: int array, one label per image.
        dataset: str. A key of `DATASETS`.
        source: str. Where the labels come from, for the message.
    """
    num_classes = DATASETS[dataset].num_classes
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"The labels of {source!r} must be 0..{num_classes - 1} for "
            f"{dataset}. Received: labels from {low} to {high}"
        )
    seen = len(np.unique(labels))
    expected = num_classes * (1 - (1 - 1 / num_classes) ** len(labels))
    if seen < expected / 2:
        raise ValueError(
            f"{len(labels)} images of {source!r} hold only {seen} distinct "
            f"labels (labels {low}..{high}), where {len(labels)} images of "
            f"{dataset}'s {num_classes} balanced classes show about "
            f"{expected:.0f}: are they another data set's (or sorted by "
            "class)?"
        )


class RandomCropFlip(keras.layers.Layer):
    """Pads each image by `padding` zeros, crops it back at a random offset
    and flips it horizontally with probability 1/2 (torchvision's
    `RandomCrop(size, padding)` + `RandomHorizontalFlip()`); one draw per
    image. Identity at inference. Outputs float32.

    Example:

    ```python
    x = RandomCropFlip(4)(keras.Input((32, 32, 3)))
    ```

    Args:
        padding: int >= 0. Zeros added on each side before cropping.
        seed: int or `None`. Seed of the random draws.
    """

    def __init__(self, padding, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(
                f"`padding` must be an int >= 0. Received: padding={padding!r}"
            )
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        images = ops.cast(images, "float32")
        if not training:
            return images
        shape = ops.shape(images)
        n, height, width = shape[0], images.shape[1], images.shape[2]
        p = self.padding
        padded = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = keras.random.randint(
            (n, 2), 0, 2 * p + 1, seed=self.seed_generator
        )
        # Flat index of each output pixel in the padded batch.
        padded_h, padded_w = height + 2 * p, width + 2 * p
        rows = offsets[:, 0, None] + ops.arange(height)[None, :]
        cols = offsets[:, 1, None] + ops.arange(width)[None, :]
        flip = keras.random.uniform((n, 1), seed=self.seed_generator) < 0.5
        cols = ops.where(flip, ops.flip(cols, axis=1), cols)
        index = (
            ops.arange(n)[:, None, None] * (padded_h * padded_w)
            + rows[:, :, None] * padded_w
            + cols[:, None, :]
        )
        channels = images.shape[3]
        pixels = ops.take(
            ops.reshape(padded, (-1, channels)),
            ops.reshape(index, (-1,)),
            axis=0,
        )
        return ops.reshape(pixels, (n, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "padding": self.padding,
            "seed": self.seed,
        }


class Cutout(keras.layers.Layer):
    """Zeroes a `size x size` square of each image, centred on a random
    pixel (it may stick out of the image): DeVries & Taylor's Cutout, as
    the authors apply it after normalization. Identity at inference.

    Example:

    ```python
    x = Cutout(16)(keras.Input((32, 32, 3)))
    ```

    Args:
        size: int >= 1. Side of the square.
        seed: int or `None`. Seed of the random draws.
    """

    def __init__(self, size, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"`size` must be an int >= 1. Received: size={size!r}"
            )
        self.size = size
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        n, height, width = (
            ops.shape(images)[0],
            images.shape[1],
            images.shape[2],
        )
        centres = keras.random.uniform((n, 2), seed=self.seed_generator)
        cy = ops.cast(centres[:, 0:1] * height, "int32")
        cx = ops.cast(centres[:, 1:2] * width, "int32")
        low, high = self.size // 2, self.size - self.size // 2
        rows = ops.arange(height)[None, :]
        cols = ops.arange(width)[None, :]
        in_rows = (rows >= cy - low) & (rows < cy + high)  # (n, height)
        in_cols = (cols >= cx - low) & (cols < cx + high)  # (n, width)
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        return images * ops.cast(~inside, images.dtype)[..., None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "seed": self.seed}


def normalization(dataset):
    """Per-channel `(x - mean) / std` of pixels in `[0, 255]`, with the
    statistics of `dataset` (a key of `DATASETS`)."""
    stats = DATASETS[dataset]
    return keras.layers.Normalization(
        mean=[255.0 * m for m in stats.mean],
        variance=[(255.0 * s) ** 2 for s in stats.std],
        name="normalize",
    )


def training_model(backbone, dataset, crop_padding=4, cutout=16):
    """`backbone` behind the authors' augmentation and normalization.

    Args:
        backbone: a model on normalized `(32, 32, 3)` float32 images.
        dataset: str. A key of `DATASETS` (the normalization).
        crop_padding: int. See `RandomCropFlip`.
        cutout: int. See `Cutout`.

    Returns:
        A model on uint8 (or float) images in `[0, 255]`.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = RandomCropFlip(crop_padding, name="crop_flip")(images)
    x = Cutout(cutout, name="cutout")(normalization(dataset)(x))
    return keras.Model(images, backbone(x), name=f"{backbone.name}_train")


def inference_model(backbone, dataset):
    """`backbone` behind the normalization only (e.g. a fused copy)."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    return keras.Model(images, backbone(normalization(dataset)(images)))

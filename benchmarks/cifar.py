"""CIFAR-10 and CIFAR-100 for the accuracy study, on any Keras backend,
without TensorFlow.

- `load_split`: images as uint8 numpy arrays, from TFRecords (read with
  `keras_sgs.tfrecords`; JPEG or PNG) or from the compact
  `<dataset>_jpeg.npz` that `../shared/tools/gpu-wheels.sh --data` writes
  (JPEG bytes, offsets, labels; decoded with Pillow). The labels are the
  records' `image/class/label` (CIFAR-100's fine labels).
- `training_model` / `inference_model`: uint8 images -> the recipe's
  augmentation (`keras_sgs.recipes.augmentation`, random draws per image
  inside the compiled train step) or its normalization -> a backbone.
- `build_run`: what one run of the study trains, from `keras_sgs.recipes`.
"""

import dataclasses

import keras
import numpy as np

import keras_sgs
from keras_sgs import recipes
from keras_sgs.recipes import IMAGE_SHAPE
from keras_sgs.tfrecords import decode_image
from keras_sgs.tfrecords import read_image_records


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


def training_model(backbone, dataset, recipe=recipes.CIFAR):
    """`backbone` behind the recipe's augmentation and normalization.

    Args:
        backbone: a model on normalized `(32, 32, 3)` float32 images.
        dataset: str. A key of `keras_sgs.recipes.DATASETS`.
        recipe: `keras_sgs.recipes.Recipe`.

    Returns:
        A model on uint8 (or float) images in `[0, 255]`.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = recipes.augmentation(dataset, recipe)(images)
    return keras.Model(images, backbone(x), name=f"{backbone.name}_train")


def inference_model(backbone, dataset):
    """`backbone` behind the normalization only (e.g. a fused copy)."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    return keras.Model(images, backbone(recipes.normalization(dataset)(images)))


def job_recipe(job):
    """The `keras_sgs.recipes.Recipe` of a job's settings."""
    return dataclasses.replace(
        recipes.CIFAR,
        epochs=job["epochs"],
        batch_size=job["batch_size"],
        learning_rate=job["lr"],
        weight_decay=job["weight_decay"],
        refresh_every=job["refresh_every"],
        refresh_warmup=job["refresh_warmup"],
        refresh_batches=job["refresh_batches"],
        mi_k=job["mi_k"],
    )


def build_run(job, train_images, num_train):
    """What one run trains, from the recipe: `(backbone, training model,
    optimizer, callbacks)`; the callbacks hold SGS-MI's refresh, whose
    held-out images are the first `refresh_batches` batches of
    `train_images` (without augmentation)."""
    recipe = job_recipe(job)
    method = recipes.METHODS[job["method"]]
    dataset = job["dataset"]
    backbone = keras_sgs.models.build_model(
        job["model"],
        recipes.DATASETS[dataset].num_classes,
        method.conv_type,
        width=job["width"],
        head=job["head"],
    )
    model = training_model(backbone, dataset, recipe)
    steps_per_epoch = -(-num_train // recipe.batch_size)
    optimizer = recipes.optimizer(
        job["method"], recipe.epochs * steps_per_epoch, recipe
    )
    callbacks = []
    if method.learns_masks:
        held_out = train_images[: recipe.refresh_batches * recipe.batch_size]
        callbacks.append(recipes.mi_callback(held_out, recipe))
    return backbone, model, optimizer, callbacks

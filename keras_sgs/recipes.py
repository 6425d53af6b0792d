"""The authors' CIFAR recipe, as data and factories, on every backend.

The recipe of Detkov et al. (ICLR 2023), read from
`configs/strategies/DyRep/wei_cifar.yaml` in Ascend-Research/Reparameterization
(their CIFAR-100 config; docs/results.md lists every point and what we do
differently): batch 128, SGD with momentum 0.9 without Nesterov, learning
rate 0.1 with cosine decay over all steps, PyTorch's coupled weight decay
5e-4 on every variable (added after the SGS mask), 200 epochs, random crop
(padding 4) and horizontal flip, then normalization, then cutout 16; SGS-MI
refreshes the masks at epoch 1 and then every 5 epochs from 2 batches, with
k = 5. The models are `keras_sgs.models.build_model`'s (the VGGs with the
4096-4096 classifier for CIFAR-100).

`CIFAR` holds those values, `DATASETS` each data set's classes, statistics
and classifier, `METHODS` what each compared method builds. `optimizer`,
`mi_callback`, `augmentation` and `normalization` build the parts; both
`benchmarks/accuracy.py` and `examples/train_cifar.py` train with them.

Example:

```python
recipe = keras_sgs.recipes.CIFAR
backbone = keras_sgs.models.build_model("vgg11", 100, head="mlp")
images = keras.Input((32, 32, 3))
x = keras_sgs.recipes.augmentation("cifar100")(images)
model = keras.Model(images, backbone(x))
steps = recipe.epochs * math.ceil(50_000 / recipe.batch_size)  # fit's steps
model.compile(
    optimizer=keras_sgs.recipes.optimizer("sgs_mi", steps),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
callbacks = [keras_sgs.recipes.mi_callback(x_train[:256])]
```
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_sgs._checks import check_int
from keras_sgs.masks import mask_from_branches
from keras_sgs.mi_scaling_callback import MIScalingCallback
from keras_sgs.sgs_wrapper import SGSWrapper


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The values of a training recipe (see the module's docstring).

    Attributes:
        epochs: int. Training epochs.
        batch_size: int.
        learning_rate: float. The peak, decayed to 0 by a cosine over all
            steps.
        momentum: float. SGD momentum.
        nesterov: bool. Nesterov momentum.
        weight_decay: float. Coupled weight decay, after the SGS mask.
        crop_padding: int or `None`. Zeros padded on each side before the
            random crop and flip; `None`: no crop and flip.
        cutout: int or `None`. Side of the cutout square; `None`: no
            cutout.
        refresh_every: int. SGS-MI: epochs between refreshes.
        refresh_warmup: int. SGS-MI: the first refreshing epoch.
        refresh_batches: int. SGS-MI: held-out batches per refresh.
        mi_k: float. SGS-MI: sharpening of the estimate.
    """

    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    crop_padding: int = 4
    cutout: int = 16
    refresh_every: int = 5
    refresh_warmup: int = 1
    refresh_batches: int = 2
    mi_k: float = 5.0


CIFAR = Recipe()


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A CIFAR data set: its classes, its training images' per-channel mean
    and standard deviation (in [0, 1] units, as published) and the VGG
    classifier of the authors' model for it (`build_model(head=...)`)."""

    num_classes: int
    mean: tuple
    std: tuple
    head: str


DATASETS = {
    "cifar10": Dataset(
        10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "linear"
    ),
    "cifar100": Dataset(
        100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "mlp"
    ),
}
IMAGE_SHAPE = (32, 32, 3)

# ACNet's block: a 3x3, a 1x3 and a 3x1 branch, each of scale 1.
ACNET_BRANCHES = (((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0))


@dataclasses.dataclass(frozen=True)
class Method:
    """What one compared method trains.

    Attributes:
        conv_type: str. `build_model`'s `conv_type`: `"plain"`, or the
            branched `"acb"` / `"repvgg"` (evaluated after `fuse_model`).
        fixed_mask: bool. Every 3x3 conv's mask is ACNet's, fixed.
        learns_masks: bool. `MIScalingCallback` learns the masks.
    """

    conv_type: str = "plain"
    fixed_mask: bool = False
    learns_masks: bool = False

    @property
    def scales_gradients(self):
        """Whether the method's masks differ from ones (fixed or learned)."""
        return self.fixed_mask or self.learns_masks

    @property
    def branched(self):
        """Whether the method trains branched convs (deployed fused)."""
        return self.conv_type != "plain"


METHODS = {
    "baseline": Method(),
    "sgs_mi": Method(learns_masks=True),
    "sgs_constant": Method(fixed_mask=True),
    "acb": Method(conv_type="acb"),
    "repvgg": Method(conv_type="repvgg"),
}


def _method(method):
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {tuple(METHODS)}. Received: "
            f"method={method!r}"
        )
    return METHODS[method]


def _dataset(dataset):
    if dataset not in DATASETS:
        raise ValueError(
            f"`dataset` must be one of {tuple(DATASETS)}. Received: "
            f"dataset={dataset!r}"
        )
    return DATASETS[dataset]


def optimizer(method, total_steps, recipe=CIFAR, masks=None):
    """The recipe's optimizer for `method`: `SGSWrapper(SGD)` with a cosine
    schedule and the coupled weight decay.

    The masks stay at ones (exactly SGD with that decay) for `baseline`
    and the branched methods, start at ones for `sgs_mi` (its callback
    learns them) and are ACNet's for `sgs_constant`.

    Args:
        method: str. A key of `METHODS`.
        total_steps: int >= 1. Steps of the cosine decay (all training
            steps).
        recipe: `Recipe`. Defaults to `CIFAR`.
        masks: `SGSWrapper`'s `masks=`, or `None` for the method's own.

    Returns:
        An `SGSWrapper`.
    """
    method = _method(method)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    schedule = keras.optimizers.schedules.CosineDecay(
        recipe.learning_rate, total_steps
    )
    sgd = keras.optimizers.SGD(
        schedule, momentum=recipe.momentum, nesterov=recipe.nesterov
    )
    if masks is None and method.fixed_mask:
        masks = mask_from_branches((3, 3), ACNET_BRANCHES)
    return SGSWrapper(
        sgd, masks=masks, coupled_weight_decay=recipe.weight_decay or None
    )


def mi_callback(data, recipe=CIFAR, **kwargs):
    """The recipe's `MIScalingCallback` on the held-out `data` (e.g. the
    first `refresh_batches * batch_size` training images, without
    augmentation); `kwargs` go to the callback."""
    return MIScalingCallback(
        data,
        every=recipe.refresh_every,
        warmup=recipe.refresh_warmup,
        k=recipe.mi_k,
        num_batches=recipe.refresh_batches,
        **kwargs,
    )


def normalization(dataset):
    """Per-channel `(x - mean) / std` of pixels in `[0, 255]`, with the
    statistics of `dataset` (a key of `DATASETS`)."""
    stats = _dataset(dataset)
    return keras.layers.Normalization(
        mean=[255.0 * m for m in stats.mean],
        variance=[(255.0 * s) ** 2 for s in stats.std],
        name="normalize",
    )


def augmentation(dataset, recipe=CIFAR, seed=None):
    """The recipe's training input, as one built layer on batches of
    `(32, 32, 3)` images in `[0, 255]`: random crop and flip,
    normalization, cutout (the augmentations the recipe has, and only when
    called with `training=True`; normalization always). It also runs in a
    `tf.data` pipeline on TensorFlow.

    Args:
        dataset: str. A key of `DATASETS` (the normalization).
        recipe: `Recipe`. Defaults to `CIFAR`.
        seed: int or `None`. Seed of the random draws.

    Returns:
        A `keras.Sequential` that outputs float32.
    """
    crop_seed, cutout_seed = (None, None) if seed is None else (seed, seed + 1)
    layers = [keras.Input(IMAGE_SHAPE)]
    if recipe.crop_padding is not None:
        layers.append(RandomCropFlip(recipe.crop_padding, seed=crop_seed))
    layers.append(normalization(dataset))
    if recipe.cutout is not None:
        layers.append(Cutout(recipe.cutout, seed=cutout_seed))
    return keras.Sequential(layers, name="augmentation")


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
    num_classes = _dataset(dataset).num_classes
    labels = np.asarray(labels)
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


@keras.saving.register_keras_serializable(package="keras_sgs")
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
        self.padding = check_int("padding", padding, minimum=0)
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


@keras.saving.register_keras_serializable(package="keras_sgs")
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
        self.size = check_int("size", size, minimum=1)
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

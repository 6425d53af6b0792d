r"""Trains a CIFAR model with SGS, branched reparameterization or plain SGD.

The defaults are the authors' CIFAR recipe (Detkov et al., ICLR 2023):
SGD momentum 0.9, learning rate 0.1 with cosine decay over all steps,
batch 128, weight decay 5e-4 (PyTorch SGD's coupled decay, added after the
SGS mask, on every trainable variable), 200 epochs, random crop (pad 4) +
horizontal flip + cutout 16; SGS-MI refreshes the masks every 5 epochs
after a warm-up epoch from 2 held-out batches (the first training images,
without augmentation), k = 5. Without --data or --tfds_name it trains on
the CIFAR-10 sample shipped in `data/cifar10_sample` (4000 training / 1000
test images).

```sh
python3 examples/train_cifar.py --model=vgg11 --method=sgs_mi \
    --tfds_name=cifar100 --output_dir=runs/vgg11_sgs_mi
```

See `training.py` for what is written to --output_dir; a run started again
with the same --output_dir resumes after its last finished epoch.
"""

import pathlib

import pipelines
import tensorflow as tf
import train_flags
import training
from absl import app
from absl import flags

# CIFAR-10 channel statistics (also used for CIFAR-100).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cifar10_sample"
CUTOUT = 16

train_flags.define_flags(
    models=("vgg11", "vgg16", "resnet18"),
    epochs=200,
    batch_size=128,
    weight_decay=5e-4,
    nesterov=False,
    strategy="default",
    diagonal_removal=False,
    help_texts={
        "lr": "Learning rate, decayed to 0 by a cosine over all steps.",
        "weight_decay": "Coupled weight decay (PyTorch SGD's, added after "
        "the SGS mask) on every trainable variable.",
        "data": "TFRecord glob of the training images (tf.train.Example "
        "with image/encoded PNG or JPEG and image/class/label). Without it and "
        "--tfds_name: the shipped sample data/cifar10_sample.",
        "tfds_name": "cifar10 or cifar100 from tensorflow_datasets, instead "
        "of TFRecords (--data not given).",
        "num_classes": "Number of classes. Defaults to the tfds metadata, "
        "else 10.",
    },
)
flags.adopt_module_key_flags(train_flags)
flags.register_validator(
    "tfds_name",
    lambda name: name in (None, "cifar10", "cifar100"),
    "--tfds_name must be cifar10 or cifar100.",
)


def decode(encoded, label):
    """PNG or JPEG bytes to a uint8 `(32, 32, 3)` image (an error for
    another size)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.ensure_shape(image, (32, 32, 3))
    return image, label


def cutout(image, size):
    """Zeroes a `size x size` square centred anywhere in the image (it may
    stick out), as in DeVries & Taylor's Cutout."""
    height, width = image.shape[0], image.shape[1]
    cy = tf.random.uniform([], 0, height, tf.int32)
    cx = tf.random.uniform([], 0, width, tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (
        (rows >= cy - size // 2)
        & (rows < cy + size - size // 2)
        & (cols >= cx - size // 2)
        & (cols < cx + size - size // 2)
    )
    return image * tf.cast(~inside, image.dtype)[..., None]


def augment(image, label):
    """Random crop of the image padded by 4, flip, normalize, cutout."""
    image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
    image = tf.image.random_crop(image, (32, 32, 3))
    image = tf.image.random_flip_left_right(image)
    return cutout(pipelines.normalize(image, MEAN, STD), CUTOUT), label


def eval_decode(encoded, label):
    """PNG or JPEG bytes to a normalized float32 image."""
    image, label = decode(encoded, label)
    return pipelines.normalize(image, MEAN, STD), label


TASK = pipelines.Task(
    name="cifar",
    input_shape=(32, 32, 3),
    exact_image_size=True,
    num_classes=10,
    train_data=str(SAMPLE / "train.tfrecord"),
    test_data=str(SAMPLE / "test.tfrecord"),
    tfds_test_split="test",
    train_decode=decode,
    train_augment=augment,
    eval_decode=eval_decode,
    cache=True,
    shuffle_buffer=50_000,
    lr_reference_batch=None,
    decay_kernels_only=False,
)


def main(argv):
    del argv
    training.train(flags.FLAGS, TASK)


if __name__ == "__main__":
    app.run(main)

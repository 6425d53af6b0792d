r"""Trains an ImageNet ResNet with SGS, branched reparameterization or SGD.

The defaults are the authors' ImageNet recipe (Detkov et al., ICLR 2023):
SGD momentum 0.9 with Nesterov, learning rate 0.1 x batch / 256 with cosine
decay over all steps, batch 256, 120 epochs, weight decay 1e-4 on conv and
dense kernels only (not on batch-norm weights or biases), Inception-style
random-resized crops (area 0.08-1, aspect 3/4-4/3) and flips for training,
resize and central crop (image_size / (image_size + 32) of the short side)
for evaluation; SGS-MI refreshes every 5 epochs after a warm-up epoch from
2 held-out batches (the first training images with the evaluation
preprocessing), with diagonal removal. Trains with `MirroredStrategy` over
all local GPUs, or `MultiWorkerMirroredStrategy` when `TF_CONFIG` is set.

```sh
python3 examples/train_imagenet.py --model=imagenet_resnet18 \
    --method=sgs_mi --tfds_data_dir=~/tensorflow_datasets \
    --output_dir=runs/r18_sgs_mi
# or TFRecords in the same format (labels 1..1000: --label_offset=-1)
python3 examples/train_imagenet.py --data='/data/train-*' \
    --test_data='/data/validation-*' --num_train_examples=1281167
```

See `training.py` for what is written to --output_dir; a run started again
with the same --output_dir resumes after its last finished epoch.
"""

import dataclasses

import pipelines
import tensorflow as tf
import train_flags
import training
from absl import app
from absl import flags

from keras_sgs import recipes

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# The authors' ImageNet recipe (above): the CIFAR recipe's SGD and SGS-MI
# settings, with these changes; no CIFAR crop or cutout (the augmentation
# is this script's random resized crop and flip).
IMAGENET = dataclasses.replace(
    recipes.CIFAR,
    epochs=120,
    batch_size=256,
    weight_decay=1e-4,
    nesterov=True,
    crop_padding=None,
    cutout=None,
)

train_flags.define_flags(
    models=("imagenet_resnet18", "imagenet_resnet50"),
    recipe=IMAGENET,
    strategy="auto",
    diagonal_removal=True,
    help_texts={
        "lr": "Learning rate per 256 images: the run uses lr * batch_size / "
        "256, decayed to 0 by a cosine over all steps.",
        "weight_decay": "Coupled weight decay (PyTorch SGD's, added after "
        "the SGS mask) on conv and dense kernels.",
        "data": "TFRecord glob of the training images (tf.train.Example "
        "with image/encoded JPEG and image/class/label); overrides "
        "--tfds_name.",
        "tfds_name": "tensorflow_datasets name, used without --data.",
        "num_classes": "Number of classes. Defaults to the tfds metadata, "
        "else 1000.",
    },
)
flags.adopt_module_key_flags(train_flags)
flags.DEFINE_integer("image_size", 224, "Training and test image size.")
flags.DEFINE_string(
    "tfds_manual_dir",
    None,
    "Folder holding the ImageNet archives tfds prepares the data from.",
)
flags.DEFINE_integer(
    "label_offset", 0, "Added to TFRecord labels (-1 for labels 1..1000)."
)
FLAGS = flags.FLAGS
FLAGS.set_default("tfds_name", "imagenet2012")


def random_resized_crop(size):
    """Returns `(JPEG bytes, label) -> (image, label)`: an Inception-style
    random crop resized to `size`, flipped at random, normalized."""

    def crop(encoded, label):
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
            tf.io.extract_jpeg_shape(encoded),
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, (size, size))
        image = tf.image.random_flip_left_right(image)
        return pipelines.normalize(image, MEAN, STD), label

    return crop


def center_crop(size):
    """Returns `(JPEG bytes, label) -> (image, label)`: the central square
    of `size / (size + 32)` of the short side, resized to `size`."""

    def crop(encoded, label):
        shape = tf.io.extract_jpeg_shape(encoded)
        height, width = shape[0], shape[1]
        side = tf.cast(
            size / (size + 32) * tf.cast(tf.minimum(height, width), tf.float32),
            tf.int32,
        )
        window = tf.stack(
            [(height - side + 1) // 2, (width - side + 1) // 2, side, side]
        )
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, (size, size))
        return pipelines.normalize(image, MEAN, STD), label

    return crop


def make_task(image_size, label_offset, tfds_manual_dir):
    """The ImageNet `pipelines.Task` for this image size."""
    return pipelines.Task(
        name="imagenet",
        input_shape=(image_size, image_size, 3),
        exact_image_size=False,
        num_classes=1000,
        train_data=None,
        test_data=None,
        tfds_test_split="validation",
        train_decode=None,
        train_augment=lambda seed: random_resized_crop(image_size),
        eval_decode=center_crop(image_size),
        cache=False,
        shuffle_buffer=10_000,
        lr_reference_batch=256,
        decay_kernels_only=True,
        label_offset=label_offset,
        tfds_manual_dir=tfds_manual_dir,
        defining_flags=("image_size", "label_offset"),
    )


def main(argv):
    del argv
    training.train(
        FLAGS,
        make_task(FLAGS.image_size, FLAGS.label_offset, FLAGS.tfds_manual_dir),
    )


if __name__ == "__main__":
    app.run(main)

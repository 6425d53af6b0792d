r"""Trains a CIFAR model with SGS, branched reparameterization or plain SGD.

The defaults are the authors' CIFAR recipe, `keras_sgs.recipes.CIFAR`, built
with the same parts as `benchmarks/accuracy.py` (`keras_sgs.recipes`: the
optimizer, the MI callback, the augmentation layers, here run in the
`tf.data` pipeline). `--dataset` sets the classes, the normalization and
the VGG classifier (for CIFAR-100 the 4096-4096 one, `--head=mlp`).
Without --data or --tfds_name it trains on the CIFAR-10 sample shipped in
`data/cifar10_sample` (4000 training / 1000 test images). TFRecords may
hold PNG or JPEG; their `image/class/label` is the label (CIFAR-100's fine
label). Every image and label is checked before training: labels outside
the classes, another data set's records (e.g. only 10 classes seen for
CIFAR-100), images of another size.

```sh
python3 examples/train_cifar.py --model=vgg11 --method=sgs_mi \
    --dataset=cifar100 --data='../shared/data/cifar100/train-*' \
    --test_data='../shared/data/cifar100/test-*' \
    --output_dir=runs/cifar100_vgg11_sgs_mi
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

from keras_sgs import recipes

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cifar10_sample"

train_flags.define_flags(
    models=("vgg11", "vgg16", "resnet18"),
    recipe=recipes.CIFAR,
    strategy="default",
    diagonal_removal=False,
    help_texts={
        "lr": "Learning rate, decayed to 0 by a cosine over all steps.",
        "weight_decay": "Coupled weight decay (PyTorch SGD's, added after "
        "the SGS mask) on every trainable variable.",
        "data": "TFRecord glob of the training images (tf.train.Example "
        "with image/encoded PNG or JPEG and image/class/label). Without it and "
        "--tfds_name: the shipped sample data/cifar10_sample (cifar10 only).",
        "tfds_name": "cifar10 or cifar100 from tensorflow_datasets, instead "
        "of TFRecords (--data not given).",
        "num_classes": "Number of classes. Defaults to --dataset's.",
    },
)
flags.adopt_module_key_flags(train_flags)
flags.DEFINE_enum(
    "dataset",
    None,
    tuple(recipes.DATASETS),
    "Sets the classes, the normalization and the default --head. Defaults "
    "to --tfds_name, else cifar10.",
)
flags.DEFINE_enum(
    "head",
    None,
    ("linear", "mlp"),
    "The VGG classifier (keras_sgs.models.build_model). Defaults to the "
    "authors' model: linear for cifar10, mlp for cifar100.",
)
flags.register_validator(
    "tfds_name",
    lambda name: name in (None, "cifar10", "cifar100"),
    "--tfds_name must be cifar10 or cifar100.",
)
flags.register_multi_flags_validator(
    ["dataset", "tfds_name"],
    lambda f: not f["dataset"] or f["tfds_name"] in (None, f["dataset"]),
    "--tfds_name must name the same data set as --dataset.",
)
flags.register_multi_flags_validator(
    ["dataset", "data", "tfds_name"],
    lambda f: f["dataset"] != "cifar100" or f["data"] or f["tfds_name"],
    "--dataset=cifar100 has no shipped sample: pass --data and --test_data "
    "(e.g. '../shared/data/cifar100/train-*') or --tfds_name=cifar100.",
)


def decode(encoded, label):
    """PNG or JPEG bytes to a uint8 `(32, 32, 3)` image (an error for
    another size)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.ensure_shape(image, (32, 32, 3))
    return image, label


def make_task(dataset, head):
    """The `pipelines.Task` of `dataset` (a key of
    `keras_sgs.recipes.DATASETS`)."""
    stats = recipes.DATASETS[dataset]

    def train_augment(seed):
        """The recipe's crop, flip, normalization and cutout
        (`keras_sgs.recipes.augmentation`), one draw per image."""
        augmentation = recipes.augmentation(dataset, seed=seed)

        def augment(image, label):
            image = augmentation(image[None], training=True)[0]
            # float32 under mixed_float16 too, as the test images.
            return tf.cast(image, tf.float32), label

        return augment

    def check_labels(labels, data):
        """The recipe's check that the labels are `dataset`'s (when
        --num_classes keeps its classes)."""
        if data.num_classes == stats.num_classes:
            recipes.check_labels(labels, dataset, data.source)

    def eval_decode(encoded, label):
        """PNG or JPEG bytes to a normalized float32 image."""
        image, label = decode(encoded, label)
        return pipelines.normalize(image, stats.mean, stats.std), label

    return pipelines.Task(
        name="cifar",
        input_shape=recipes.IMAGE_SHAPE,
        exact_image_size=True,
        num_classes=stats.num_classes,
        train_data=str(SAMPLE / "train.tfrecord"),
        test_data=str(SAMPLE / "test.tfrecord"),
        tfds_test_split="test",
        train_decode=decode,
        train_augment=train_augment,
        eval_decode=eval_decode,
        cache=True,
        shuffle_buffer=50_000,
        lr_reference_batch=None,
        decay_kernels_only=False,
        head=head,
        check_every_example=True,
        check_labels=check_labels,
        defining_flags=("dataset", "head"),
    )


def task_from_flags(config):
    """The `pipelines.Task` of the flag values `config`, whose `dataset`
    (from --tfds_name, else cifar10) and `head` (the data set's) are set
    where not given, so that the run records them."""
    config.dataset = config.dataset or config.tfds_name or "cifar10"
    config.head = config.head or recipes.DATASETS[config.dataset].head
    return make_task(config.dataset, config.head)


def main(argv):
    del argv
    training.train(flags.FLAGS, task_from_flags(flags.FLAGS))


if __name__ == "__main__":
    app.run(main)

r"""Trains a CIFAR model with SGS, branched reparameterization or plain SGD.

The defaults are the authors' CIFAR-100 recipe (Detkov et al., ICLR 2023;
`configs/strategies/DyRep/wei_cifar.yaml` in their repository), for
CIFAR-10 too:
SGD momentum 0.9, learning rate 0.1 with cosine decay over all steps,
batch 128, weight decay 5e-4 (PyTorch SGD's coupled decay, added after the
SGS mask, on every trainable variable), 200 epochs, random crop (pad 4) +
horizontal flip + cutout 16; SGS-MI refreshes the masks every 5 epochs
after a warm-up epoch from 2 batches (the first training images, without
augmentation), k = 5. `--dataset` sets the classes, the
normalization and the VGG classifier: for CIFAR-100 the authors' model
has the 4096-4096 classifier of `weiaicunzai/pytorch-cifar100`
(`--head=mlp`). Without --data or --tfds_name it trains on the CIFAR-10
sample shipped in `data/cifar10_sample` (4000 training / 1000 test
images). TFRecords may hold PNG or JPEG; their `image/class/label` is
the label (CIFAR-100's fine label). Every image and label is checked
before training: labels outside the classes, another data set's records
(e.g. only 10 classes seen for CIFAR-100), images of another size.

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

# Per data set: classes, the training images' per-channel mean and
# standard deviation, and the VGG classifier of the authors' model.
DATASETS = {
    "cifar10": (
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "linear",
    ),
    "cifar100": (
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "mlp",
    ),
}
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
    tuple(DATASETS),
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


def make_task(dataset, head):
    """The `pipelines.Task` of `dataset` (a key of `DATASETS`)."""
    num_classes, mean, std, _ = DATASETS[dataset]

    def augment(image, label):
        """Random crop of the image padded by 4, flip, normalize, cutout."""
        image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
        image = tf.image.random_crop(image, (32, 32, 3))
        image = tf.image.random_flip_left_right(image)
        return cutout(pipelines.normalize(image, mean, std), CUTOUT), label

    def eval_decode(encoded, label):
        """PNG or JPEG bytes to a normalized float32 image."""
        image, label = decode(encoded, label)
        return pipelines.normalize(image, mean, std), label

    return pipelines.Task(
        name="cifar",
        input_shape=(32, 32, 3),
        exact_image_size=True,
        num_classes=num_classes,
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
        head=head,
        check_every_example=True,
        defining_flags=("dataset", "head"),
    )


def task_from_flags(config):
    """The `pipelines.Task` of the flag values `config`, whose `dataset`
    (from --tfds_name, else cifar10) and `head` (the data set's) are set
    where not given, so that the run records them."""
    config.dataset = config.dataset or config.tfds_name or "cifar10"
    config.head = config.head or DATASETS[config.dataset][3]
    return make_task(config.dataset, config.head)


def main(argv):
    del argv
    training.train(flags.FLAGS, task_from_flags(flags.FLAGS))


if __name__ == "__main__":
    app.run(main)

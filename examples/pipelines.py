"""The training scripts' data: where it comes from (TFRecords or
tensorflow_datasets), the checks made before training, and the `tf.data`
pipelines."""

import dataclasses

import numpy as np
import tensorflow as tf

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


@dataclasses.dataclass
class Task:
    """What differs between the CIFAR and ImageNet scripts.

    Attributes:
        name: str. Names the default output folder.
        input_shape: tuple. The model's input shape.
        exact_image_size: bool. The stored images must have the input's
            height and width (CIFAR); otherwise any size (ImageNet's crops
            resize them).
        num_classes: int. Used without --num_classes and tfds.
        train_data, test_data: str or `None`. TFRecord globs used without
            --data and --tfds_name (`None`: tfds is required).
        tfds_test_split: str. The tfds split evaluated.
        train_decode: `(bytes, label) -> (x, label)` before the cache, or
            `None` to keep the encoded bytes.
        train_augment: `seed -> ((x, label) -> (image, label))`: the
            augmentation after the shuffle, made once per pipeline (its
            random draws start from `seed`).
        eval_decode: `(bytes, label) -> (image, label)`.
        cache: bool. Cache the decoded training and test sets in memory.
        shuffle_buffer: int. Training examples in the shuffle buffer.
        lr_reference_batch: `None` (--lr is the learning rate) or an int
            `b` (the learning rate is `lr * batch_size / b`).
        decay_kernels_only: bool. Weight decay on conv and dense kernels
            only; otherwise on every trainable variable.
        label_offset: int. Added to the TFRecords' labels (-1 for
            1-based labels).
        tfds_manual_dir: str or `None`. tfds' manual download folder.
        defining_flags: tuple. The script's own flags that define a run,
            besides `train_flags.DEFINING_FLAGS`.
        head: str. The VGG classifier (`keras_sgs.models.build_model`).
        check_every_example: bool. `check_data` decodes every image and
            reads every label (small data sets); otherwise the first
            batch of the first file and the first example of the others.
        check_labels: `None`, or `(labels, data) -> None`, which raises a
            `ValueError` when all the training labels (read when
            `check_every_example`) are not the data set's (e.g.
            `keras_sgs.recipes.check_labels`).
    """

    name: str
    input_shape: tuple
    exact_image_size: bool
    num_classes: int
    train_data: str
    test_data: str
    tfds_test_split: str
    train_decode: object
    train_augment: object
    eval_decode: object
    cache: bool
    shuffle_buffer: int
    lr_reference_batch: int
    decay_kernels_only: bool
    label_offset: int = 0
    tfds_manual_dir: str = None
    defining_flags: tuple = ()
    head: str = "linear"
    check_every_example: bool = False
    check_labels: object = None


@dataclasses.dataclass
class Data:
    """Training and test examples (`(encoded image, label)`) and where
    they come from.

    Attributes:
        train, test: `tf.data.Dataset`s of `(encoded bytes, int32 label)`.
        num_train: int. Training examples.
        num_classes: int.
        source: str. `--data`'s glob or `tfds:<name>`, for results.json.
        train_parts, test_parts: lists of `(name, dataset)`: each file
            (or the tfds split) alone, so that checks can name the culprit.
        train_files, test_files: int or `None` (tfds). How many files.
    """

    train: object
    test: object
    num_train: int
    num_classes: int
    source: str
    train_parts: list
    test_parts: list
    train_files: int = None
    test_files: int = None


def record_files(pattern, flag):
    """The files matching a TFRecord glob, sorted; `FileNotFoundError`
    naming `flag` when there are none."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(
            f"{flag}: no TFRecord file matches {pattern!r}."
        )
    return files


def record_examples(files, label_offset=0):
    """`(encoded image bytes, int32 label)` pairs from TFRecord files of
    `tf.train.Example`s with `image/encoded` and `image/class/label`."""

    def parse(record):
        example = tf.io.parse_single_example(record, _FEATURES)
        label = tf.cast(example["image/class/label"] + label_offset, tf.int32)
        return example["image/encoded"], label

    return tf.data.TFRecordDataset(
        files, num_parallel_reads=tf.data.AUTOTUNE
    ).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def count_records(files, flag):
    """Records in `files`, read once file by file; a corrupt file is
    named in the error."""
    total = 0
    for path in files:
        try:
            total += int(
                tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1)
            )
        except tf.errors.OpError as error:
            raise ValueError(
                f"{flag}: {path} is not a readable TFRecord file: "
                f"{error.message.splitlines()[0]}"
            ) from None
    return total


def tfds_examples(name, split, data_dir, manual_dir=None):
    """`(encoded image bytes, label)` pairs of a tensorflow_datasets split.

    Returns:
        `(dataset, number of examples, number of classes)`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            f"--tfds_name={name} needs tensorflow_datasets: "
            "`pip install tensorflow-datasets` (or the `examples` extra), "
            "or pass TFRecords with --data / --test_data."
        ) from None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        with_info=True,
        decoders={"image": tfds.decode.SkipDecoding()},
        download_and_prepare_kwargs={"download_config": download_config},
    )
    dataset = dataset.map(lambda image, label: (image, tf.cast(label, "int32")))
    if split in info.splits:
        size = info.splits[split].num_examples
    else:  # no split metadata (e.g. `tfds.testing.mock_data`): count
        size = int(dataset.reduce(0, lambda n, _: n + 1))
    return dataset, size, info.features["label"].num_classes


def load_data(config, task):
    """The examples named by --data / --tfds_name, else the task's default
    TFRecords."""
    if config.data or not config.tfds_name:
        train_glob = config.data or task.train_data
        test_glob = config.test_data if config.data else task.test_data
        if not train_glob or not test_glob:
            raise ValueError(
                "Pass --data and --test_data (TFRecord globs) or --tfds_name."
            )
        offset = task.label_offset
        train_files = record_files(train_glob, "--data")
        test_files = record_files(test_glob, "--test_data")
        # A full pass over the test files finds a corrupt one now, not
        # after the last epoch.
        count_records(test_files, "--test_data")
        return Data(
            train=record_examples(train_files, offset),
            test=record_examples(test_files, offset),
            num_train=config.num_train_examples
            or count_records(train_files, "--data"),
            num_classes=config.num_classes or task.num_classes,
            source=train_glob,
            train_parts=[
                (f"--data file {f}", record_examples(f, offset))
                for f in train_files
            ],
            test_parts=[
                (f"--test_data file {f}", record_examples(f, offset))
                for f in test_files
            ],
            train_files=len(train_files),
            test_files=len(test_files),
        )
    train, num_train, num_classes = tfds_examples(
        config.tfds_name, "train", config.tfds_data_dir, task.tfds_manual_dir
    )
    test, _, _ = tfds_examples(
        config.tfds_name,
        task.tfds_test_split,
        config.tfds_data_dir,
        task.tfds_manual_dir,
    )
    name = f"tfds:{config.tfds_name}"
    return Data(
        train=train,
        test=test,
        num_train=num_train,
        num_classes=config.num_classes or num_classes,
        source=name,
        train_parts=[(f"{name} split train", train)],
        test_parts=[(f"{name} split {task.tfds_test_split}", test)],
    )


def check_data(data, task, batch_size):
    """Checks, before training, that the data fits the model and flags.

    Decodes every example when `task.check_every_example`, else the first
    `batch_size` examples of the first file (or tfds split) of the
    training and of the test data and the first example of every other
    file, and checks that each image has the model's channels (and its
    height and width when `task.exact_image_size`) and each label is in
    `[0, num_classes)`. With every example read, `task.check_labels`
    checks all the training labels (CIFAR-10 records given as CIFAR-100
    show only 10 classes).

    Raises:
        ValueError: naming the file (or split), the example and what was
            wrong; or when the training data is smaller than one batch.
    """
    if data.num_train < batch_size:
        raise ValueError(
            f"--batch_size={batch_size} is larger than the training data "
            f"({data.num_train} examples in {data.source}): use a smaller "
            "--batch_size or more data."
        )
    for parts in (data.train_parts, data.test_parts):
        labels = []
        for index, (name, examples) in enumerate(parts):
            if not task.check_every_example:
                examples = examples.take(batch_size if index == 0 else 1)
            labels.append(_check_examples(name, examples, task, data))
        if parts is data.train_parts and task.check_every_example:
            if task.check_labels is not None:
                task.check_labels(np.concatenate(labels), data)


def _check_examples(name, examples, task, data):
    """The labels of `examples`, each checked with its image's shape."""
    height, width, channels = task.input_shape

    def shape(encoded, label):
        image = tf.io.decode_image(encoded, expand_animations=False)
        return tf.shape(image), label

    shapes, labels = [], []
    try:
        batches = examples.map(shape, num_parallel_calls=tf.data.AUTOTUNE)
        for batch_shapes, batch_labels in batches.batch(4096):
            shapes.append(batch_shapes.numpy())
            labels.append(batch_labels.numpy())
    except tf.errors.OpError as error:
        raise ValueError(
            f"{name} cannot be read as images with labels: "
            f"{error.message.splitlines()[0]}"
        ) from None
    shapes = np.concatenate(shapes) if shapes else np.zeros((0, 3), int)
    labels = np.concatenate(labels) if labels else np.zeros((0,), int)
    for position, ((h, w, c), label) in enumerate(zip(shapes, labels)):
        problem = None
        if c != channels:
            problem = f"{c} channels, not {channels}"
        elif task.exact_image_size and (h, w) != (height, width):
            problem = f"a {h}x{w} image, not {height}x{width}"
        elif not 0 <= label < data.num_classes:
            problem = (
                f"label {label}, outside [0, {data.num_classes}) "
                "(--num_classes)"
            )
        if problem:
            raise ValueError(f"{name}: example {position} has {problem}.")
    return labels


def shard_examples_if_few_files(dataset, num_files, num_workers):
    """`dataset`, sharded over multi-worker workers by examples when it has
    fewer files than workers (`tf.distribute` shards by file by default,
    and fails then); unchanged otherwise."""
    if num_files is None or num_files >= num_workers:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def train_dataset(examples, task, batch_size, seed):
    """Endless shuffled, augmented batches (the last partial one dropped)."""
    if task.train_decode is not None:
        examples = examples.map(
            task.train_decode, num_parallel_calls=tf.data.AUTOTUNE
        )
    if task.cache:
        examples = examples.cache()
    return (
        examples.shuffle(task.shuffle_buffer, seed=seed)
        .repeat()
        .map(task.train_augment(seed), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(examples, task, batch_size, pad=False):
    """Batches in file order with the test preprocessing.

    With `pad=True` the batches are `(images, labels, weights)`, the last
    one filled up to `batch_size` with zero-weight blank images. Under
    `MirroredStrategy` a short last batch can leave a replica an empty
    batch, on which TensorFlow 2.21's oneDNN CPU convolution returns a
    wrongly shaped result; with weights the metrics stay exact.
    """
    examples = examples.map(
        task.eval_decode, num_parallel_calls=tf.data.AUTOTUNE
    )
    if task.cache:
        examples = examples.cache()
    batches = examples.batch(batch_size)
    if pad:
        batches = batches.map(pad_batch(batch_size))
    return batches.prefetch(tf.data.AUTOTUNE)


def pad_batch(batch_size):
    """Returns `(images, labels) -> (images, labels, weights)` padded to
    `batch_size` rows with zeros and weight 0."""

    def pad(images, labels):
        missing = batch_size - tf.shape(labels)[0]
        rows = [[0, missing]] + [[0, 0]] * (len(images.shape) - 1)
        weights = tf.concat(
            [tf.ones_like(labels, tf.float32), tf.zeros([missing])], 0
        )
        return (
            tf.pad(images, rows),
            tf.pad(labels, [[0, missing]]),
            weights,
        )

    return pad


def normalize(image, mean, std):
    """`(image / 255 - mean) / std` per channel, as float32."""
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std

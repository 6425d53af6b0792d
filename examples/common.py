"""What `train_cifar.py` and `train_imagenet.py` share.

Flags, the distribution strategy, the `tf.data` pipelines, the optimizer
for each `--method`, the callbacks and the outputs written to
`--output_dir`:

- `backup/`: `keras.callbacks.BackupAndRestore` state, so that a killed run
  started again with the same flags resumes at the epoch it stopped;
- `model.keras`: the model (and optimizer, SGS masks included) after the
  last finished epoch; `fused.keras` for `acb` / `repvgg`;
- `tensorboard/`: TensorBoard logs;
- `history.json`: every epoch's logs, across resumed runs;
- `masks.png`: the final SGS masks (`sgs_mi`, `sgs_constant`);
- `results.json`: test accuracy, timings and the run's settings.

Every method trains with `SGSWrapper(SGD(...), coupled_weight_decay=...)`:
the authors' step, PyTorch's `SGD(weight_decay=...)`, where `wd * w` is
added to the gradient after the SGS mask and goes through momentum. For
`baseline`, `acb` and `repvgg` the masks stay at ones, which is exactly
SGD with that coupled decay.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import statistics
import time
import warnings

import keras
import tensorflow as tf
from absl import flags
from absl import logging

import keras_sgs
from keras_sgs.models import build_model
from keras_sgs.reparam import fuse_model

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("baseline", "sgs_mi", "sgs_constant", "acb", "repvgg")
SGS_METHODS = ("sgs_mi", "sgs_constant")
CONV_TYPES = {"acb": "acb", "repvgg": "repvgg"}  # other methods: "plain"
# ACNet's 3x3 + 1x3 + 3x1 block as a fixed mask for `sgs_constant`.
ACB_BRANCHES = [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
# Exit status of a run stopped by `--stop_after_epoch`.
STOPPED_EXIT_CODE = 75


def define_flags(models, epochs, batch_size, lr_help, weight_decay,
                 weight_decay_help, nesterov, strategy, diagonal_removal,
                 data_help, tfds_help, num_classes_help):
    """Defines the flags both training scripts take, with their defaults."""
    flags.DEFINE_enum("model", models[0], models, "Architecture.")
    flags.DEFINE_enum(
        "method", "baseline", METHODS,
        "baseline: plain convs, SGD. sgs_mi: SGSWrapper(SGD) with masks "
        "learned by MIScalingCallback. sgs_constant: SGSWrapper(SGD) with "
        "ACNet's fixed 3x3+1x3+3x1 mask. acb / repvgg: branched convs "
        "(keras_sgs.reparam), SGD; also evaluated after fusion.")
    flags.DEFINE_integer("epochs", epochs, "Training epochs.")
    flags.DEFINE_integer(
        "batch_size", batch_size,
        "Global batch size (split over the replicas).")
    flags.DEFINE_float("lr", 0.1, lr_help)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_bool("nesterov", nesterov, "Nesterov momentum.")
    flags.DEFINE_float("weight_decay", weight_decay, weight_decay_help)
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_float(
        "width", 1.0, "Width multiplier of the model's channels.")
    flags.DEFINE_string("data", None, data_help)
    flags.DEFINE_string(
        "test_data", None, "TFRecord glob of the test images (with --data).")
    flags.DEFINE_string("tfds_name", None, tfds_help)
    flags.DEFINE_string(
        "tfds_data_dir", None, "tensorflow_datasets data_dir (--tfds_name).")
    flags.DEFINE_integer("num_classes", None, num_classes_help)
    flags.DEFINE_integer(
        "num_train_examples", None,
        "Training images in --data; counted with one pass when not given.")
    flags.DEFINE_enum(
        "strategy", strategy, STRATEGIES,
        "default: one device. mirrored: MirroredStrategy over all local "
        "GPUs (two logical CPUs when there is no GPU). multiworker: "
        "MultiWorkerMirroredStrategy (TF_CONFIG). auto: multiworker when "
        "TF_CONFIG is set, else mirrored.")
    flags.DEFINE_bool(
        "mixed_precision", False, "Train under the mixed_float16 policy.")
    flags.DEFINE_string(
        "output_dir", None,
        "Where backups, checkpoints, logs, history.json, masks.png and "
        "results.json go. Defaults to runs/<cifar|imagenet>/<model>_<method> "
        "in the repository.")
    flags.DEFINE_integer(
        "verbose", 1,
        "Keras verbosity: 0 silent, 1 progress bars, 2 one line per epoch.",
        lower_bound=0, upper_bound=2)
    flags.DEFINE_integer(
        "steps_per_epoch", None,
        "Training steps per epoch. Defaults to training images // "
        "batch_size.")
    flags.DEFINE_integer(
        "refresh_every", 5, "SGS-MI: epochs between mask refreshes.")
    flags.DEFINE_integer(
        "refresh_warmup", 1,
        "SGS-MI: the first epoch (0-based) that refreshes; masks are ones "
        "before it.")
    flags.DEFINE_integer(
        "refresh_batches", 2,
        "SGS-MI: held-out batches per refresh: the first training batches "
        "without augmentation (test preprocessing).")
    flags.DEFINE_float("mi_k", 5.0, "SGS-MI: sharpening k of the estimate.")
    flags.DEFINE_bool(
        "diagonal_removal", diagonal_removal,
        "SGS-MI: drop zero pairs and the histogram diagonal.")
    flags.DEFINE_integer(
        "stop_after_epoch", None,
        "For testing resumption: exit (status 75, like a killed job) "
        "after this many epochs, once the backup is written.")


@dataclasses.dataclass
class Task:
    """What differs between the CIFAR and ImageNet scripts.

    Attributes:
        name: str. Names the default output folder.
        input_shape: tuple. The model's input shape.
        num_classes: int. Used without --num_classes and tfds.
        train_data, test_data: str or `None`. TFRecord globs used without
            --data and --tfds_name (`None`: tfds is required).
        tfds_test_split: str. The tfds split evaluated.
        train_decode: `(bytes, label) -> (x, label)` before the cache, or
            `None` to keep the encoded bytes.
        train_augment: `(x, label) -> (image, label)` after the shuffle.
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
    """

    name: str
    input_shape: tuple
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


# -- strategy ---------------------------------------------------------------


def make_strategy(name):
    """Returns the `tf.distribute` strategy for `--strategy`.

    Call it before any other TensorFlow op: `mirrored` without a GPU splits
    the CPU into two logical devices, and `multiworker` sets up collectives.
    """
    if name == "auto":
        name = "multiworker" if os.environ.get("TF_CONFIG") else "mirrored"
    if name == "multiworker":
        return multi_worker_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    if tf.config.get_logical_device_configuration(cpu) is None:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


def multi_worker_strategy():
    """`MultiWorkerMirroredStrategy` (from `TF_CONFIG`), patched so that
    Keras 3.15.1's `fit()` runs under it.

    Before training `fit()` reduces the whole `(x, y)` batch in one
    `strategy.reduce` call, and after each step it reduces the scalar loss
    and metrics along `axis=0`; the strategy accepts neither. The patched
    `reduce` reduces each value on its own, and scalars across replicas
    only. Create it before any other TensorFlow op runs.
    """
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    reduce = strategy.reduce

    def reduce_each(reduce_op, value, axis=None):
        def reduce_one(v):
            rank = strategy.experimental_local_results(v)[0].shape.rank
            return reduce(reduce_op, v, axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)

    strategy.reduce = reduce_each
    return strategy


def worker_output_dir(output_dir, strategy):
    """`output_dir` for the chief; a private sub-folder for other workers
    of a multi-worker run (they must not overwrite the chief's files)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return output_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (
        not has_chief and task_type == "worker" and task_id == 0
    ):
        return output_dir
    return os.path.join(output_dir, "workers", f"{task_type}_{task_id}")


# -- data ---------------------------------------------------------------


def record_examples(pattern, label_offset=0):
    """`(encoded image bytes, int32 label)` pairs from TFRecord files of
    `tf.train.Example`s with `image/encoded` and `image/class/label`."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord file matches {pattern!r}.")
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        label = tf.cast(example["image/class/label"] + label_offset, tf.int32)
        return example["image/encoded"], label

    return tf.data.TFRecordDataset(
        files, num_parallel_reads=tf.data.AUTOTUNE
    ).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


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
    return (
        dataset,
        info.splits[split].num_examples,
        info.features["label"].num_classes,
    )


def count_examples(dataset):
    """Number of elements, counted with one pass."""
    return int(dataset.reduce(0, lambda count, _: count + 1))


@dataclasses.dataclass
class Data:
    """Training and test examples (encoded) and their sizes."""

    train: object
    test: object
    num_train: int
    num_classes: int
    source: str


def load_data(config, task):
    """The examples named by --data / --tfds_name, else the task's default
    TFRecords."""
    if config.data or not config.tfds_name:
        train_glob = config.data or task.train_data
        test_glob = config.test_data if config.data else task.test_data
        if not train_glob or not test_glob:
            raise ValueError(
                "Pass --data and --test_data (TFRecord globs) or "
                "--tfds_name.")
        train = record_examples(train_glob, task.label_offset)
        num_train = config.num_train_examples or count_examples(train)
        return Data(
            train=train,
            test=record_examples(test_glob, task.label_offset),
            num_train=num_train,
            num_classes=config.num_classes or task.num_classes,
            source=train_glob,
        )
    train, num_train, num_classes = tfds_examples(
        config.tfds_name, "train", config.tfds_data_dir, task.tfds_manual_dir)
    test, _, _ = tfds_examples(
        config.tfds_name, task.tfds_test_split, config.tfds_data_dir,
        task.tfds_manual_dir)
    return Data(
        train=train,
        test=test,
        num_train=num_train,
        num_classes=config.num_classes or num_classes,
        source=f"tfds:{config.tfds_name}",
    )


def train_dataset(examples, task, batch_size, seed):
    """Endless shuffled, augmented batches (the last partial one dropped)."""
    if task.train_decode is not None:
        examples = examples.map(
            task.train_decode, num_parallel_calls=tf.data.AUTOTUNE)
    if task.cache:
        examples = examples.cache()
    return (
        examples.shuffle(task.shuffle_buffer, seed=seed)
        .repeat()
        .map(task.train_augment, num_parallel_calls=tf.data.AUTOTUNE)
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
        task.eval_decode, num_parallel_calls=tf.data.AUTOTUNE)
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
            [tf.ones_like(labels, tf.float32), tf.zeros([missing])], 0)
        return (
            tf.pad(images, rows),
            tf.pad(labels, [[0, missing]]),
            weights,
        )

    return pad


def normalize(image, mean, std):
    """`(image / 255 - mean) / std` per channel, as float32."""
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


# -- model and optimizer --------------------------------------------------


def kernels(model):
    """The conv and dense kernels of `model` (no biases, no norm weights)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            variable = getattr(layer, name, None)
            if variable is not None and variable.trainable:
                found.append(variable)
    return found


def make_optimizer(config, model, learning_rate, total_steps,
                   decay_kernels_only):
    """`SGSWrapper(SGD)` with cosine decay and coupled weight decay (on
    every trainable variable, or on the kernels only); the masks are
    ACNet's for `sgs_constant`, else ones (learned by the callback for
    `sgs_mi`)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=total_steps)
    sgd = keras.optimizers.SGD(
        schedule, momentum=config.momentum, nesterov=config.nesterov)
    if decay_kernels_only:
        kept = {id(v) for v in kernels(model)}
        sgd.exclude_from_weight_decay(var_list=[
            v for v in model.trainable_variables if id(v) not in kept])
    masks = None
    if config.method == "sgs_constant":
        masks = keras_sgs.mask_from_branches((3, 3), ACB_BRANCHES)
    return keras_sgs.SGSWrapper(
        sgd, masks=masks, coupled_weight_decay=config.weight_decay or None)


def compile_model(model, optimizer=None):
    """Compiles for sparse labels and logits. `accuracy` and
    `cross_entropy` (the loss without weight decay) honour the zero
    weights of the test set's padding."""
    model.compile(
        optimizer=optimizer or "sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="cross_entropy"),
        ],
    )


# -- callbacks --------------------------------------------------------------


def make_history_callback(path):
    """A callback that keeps `history.json` (one list per log key, like
    `History.history`, plus `epoch` (1-based) and `epoch_seconds`) up to
    date after every epoch. Entries of a resumed run replace those from
    the epoch it resumes at on.

    `epoch_seconds` runs from this callback's `on_epoch_begin` to its
    `on_epoch_end`: put it after `MIScalingCallback` to leave the refresh
    out (that is in `sgs_refresh_seconds`).
    """
    class EpochHistory(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                self.epochs = [
                    {key: values[i] for key, values in saved.items()}
                    for i in range(len(saved["epoch"]))
                ]
            self.first_epoch = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.first_epoch is None:
                self.first_epoch = epoch
                self.epochs = [e for e in self.epochs if e["epoch"] <= epoch]
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            entry = {"epoch": epoch + 1, **(logs or {})}
            entry["epoch_seconds"] = time.perf_counter() - self._start
            self.epochs.append(entry)
            keys = sorted({key for e in self.epochs for key in e})
            with open(path, "w") as f:
                json.dump(
                    {k: [e.get(k) for e in self.epochs] for k in keys},
                    f, indent=1)

    return EpochHistory()


def make_stop_callback(epochs_done):
    """A callback that ends the process after `epochs_done` epochs, like a
    killed job (for testing `BackupAndRestore`)."""
    class StopAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs_done:
                print(f"--stop_after_epoch={epochs_done}: exiting.",
                      flush=True)
                os._exit(STOPPED_EXIT_CODE)

    return StopAfterEpoch()


def make_replica_sync_callback(strategy):
    """A callback that averages the non-trainable float variables (batch-norm
    moving statistics) over the replicas at the end of every epoch.

    Under `tf.distribute`, Keras 3 updates each replica's copy of the
    moving statistics from that replica's part of the batch only
    (aggregation "none"), so the copies drift apart: the evaluation of
    each replica's share of a batch would use different statistics than
    the checkpoint, the MI refresh and the fused model (replica 0's).
    """

    class AverageReplicaStatistics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            variables = [
                v for v in self.model.non_trainable_variables
                if "float" in v.dtype
            ]

            def average():
                context = tf.distribute.get_replica_context()
                for variable in variables:
                    variable.assign(context.all_reduce(
                        tf.distribute.ReduceOp.MEAN, variable.value))

            strategy.run(average)

    return AverageReplicaStatistics()


def make_callbacks(config, output_dir, history, held_out, strategy):
    """The callbacks of `fit`, in this order: the MI refresh (`sgs_mi`),
    `history`, the replica average (several replicas), the backup, the
    checkpoint, TensorBoard (when installed), the test stop."""
    callbacks = []
    if config.method == "sgs_mi":
        callbacks.append(keras_sgs.MIScalingCallback(
            held_out,
            every=config.refresh_every,
            warmup=config.refresh_warmup,
            k=config.mi_k,
            diagonal_removal=config.diagonal_removal,
            num_batches=config.refresh_batches,
        ))
    callbacks.append(history)
    if strategy.num_replicas_in_sync > 1:
        callbacks.append(make_replica_sync_callback(strategy))
    callbacks += [
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output_dir, "model.keras")),
    ]
    if importlib.util.find_spec("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(output_dir, "tensorboard")))
    else:
        logging.warning("No TensorBoard logs: `pip install tensorboard`.")
    if config.stop_after_epoch:
        callbacks.append(make_stop_callback(config.stop_after_epoch))
    return callbacks


# -- the run ------------------------------------------------------------------


def train(config, task):
    """Trains, evaluates and writes `--output_dir`; returns the results.

    Args:
        config: the flag values (an object with one attribute per flag,
            e.g. `absl.flags.FLAGS` or a `types.SimpleNamespace`).
        task: `Task`.

    Returns:
        The dict written to `results.json`.
    """
    strategy = make_strategy(config.strategy)  # before any other TF op

    keras.utils.clear_session()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.mixed_precision else "float32")
    output_dir = worker_output_dir(
        config.output_dir or str(
            REPO / "runs" / task.name / f"{config.model}_{config.method}"),
        strategy)
    os.makedirs(output_dir, exist_ok=True)

    data = load_data(config, task)
    train_ds = train_dataset(data.train, task, config.batch_size, config.seed)
    test_ds = eval_dataset(data.test, task, config.batch_size, pad=True)
    held_out = eval_dataset(
        data.train.take(config.refresh_batches * config.batch_size), task,
        config.batch_size)
    steps = config.steps_per_epoch or data.num_train // config.batch_size
    learning_rate = config.lr
    if task.lr_reference_batch:
        learning_rate *= config.batch_size / task.lr_reference_batch

    with strategy.scope():
        model = build_model(
            config.model,
            data.num_classes,
            conv_type=CONV_TYPES.get(config.method, "plain"),
            input_shape=task.input_shape,
            width=config.width,
        )
        compile_model(model, make_optimizer(
            config, model, learning_rate, config.epochs * steps,
            task.decay_kernels_only))
    history = make_history_callback(os.path.join(output_dir, "history.json"))
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=steps,
        callbacks=make_callbacks(
            config, output_dir, history, held_out, strategy),
        verbose=config.verbose,
    )

    results = {
        "model": config.model,
        "method": config.method,
        "data": data.source,
        "num_classes": data.num_classes,
        "train_examples": data.num_train,
        "epochs": config.epochs,
        "steps_per_epoch": steps,
        "batch_size": config.batch_size,
        "learning_rate": learning_rate,
        "weight_decay": config.weight_decay,
        "width": config.width,
        "seed": config.seed,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": config.mixed_precision,
        "resumed_from_epoch": history.first_epoch,
    }
    results.update(epoch_timings(history.epochs))
    results.update(evaluate(model, test_ds, "test"))
    if config.method in CONV_TYPES:
        with strategy.scope():
            fused = fuse_model(model)
            compile_model(fused)
        results.update(evaluate(fused, test_ds, "fused_test"))
        fused.save(os.path.join(output_dir, "fused.keras"))
    if config.method in SGS_METHODS:
        keras_sgs.plot_masks(model, os.path.join(output_dir, "masks.png"))
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(summary_line(results, output_dir), flush=True)
    return results


def epoch_timings(epochs):
    """Seconds per epoch (median, MI refreshes excluded) and MI refresh
    seconds (total) and count, from the `history.json` entries."""
    refreshes = [e.get("sgs_refresh_seconds") or 0.0 for e in epochs]
    return {
        "seconds_per_epoch": statistics.median(
            e["epoch_seconds"] for e in epochs),
        "epoch_seconds": [e["epoch_seconds"] for e in epochs],
        "sgs_refresh_seconds": sum(refreshes),
        "sgs_refreshes": sum(1 for s in refreshes if s > 0),
    }


def evaluate(model, dataset, prefix):
    """`{prefix_accuracy, prefix_cross_entropy}` of `model` on `dataset`."""
    with warnings.catch_warnings():
        # Keras finds the end of a dataset of unknown size by running out.
        warnings.filterwarnings("ignore", "Your input ran out of data")
        logs = model.evaluate(dataset, verbose=0, return_dict=True)
    return {
        f"{prefix}_accuracy": float(logs["accuracy"]),
        f"{prefix}_cross_entropy": float(logs["cross_entropy"]),
    }


def summary_line(results, output_dir):
    """One line: model, method, accuracy, timings, where the outputs are."""
    line = (
        f"{results['model']} {results['method']}: test accuracy "
        f"{results['test_accuracy']:.4f}"
    )
    if "fused_test_accuracy" in results:
        line += f" (fused {results['fused_test_accuracy']:.4f})"
    line += (
        f", {results['seconds_per_epoch']:.1f} s/epoch over "
        f"{results['epochs']} epochs"
    )
    if results["sgs_refreshes"]:
        line += (
            f", {results['sgs_refreshes']} MI refreshes in "
            f"{results['sgs_refresh_seconds']:.1f} s"
        )
    return f"{line} -> {output_dir}"

"""A training run of `train_cifar.py` / `train_imagenet.py`, end to end.

`train(config, task)` checks `--output_dir` and the data, builds the model
and the optimizer for `--method`, trains with the callbacks and writes
into `--output_dir`:

- `run.lock`: held by the live run (`fcntl.flock`, released when its
  process ends): a second run into the same folder is refused at once;
- `run_flags.json`: the task and the flags the run was started with,
  written once its flags and data have passed every check; a restart with
  other defining flags is refused (`--overwrite` starts over);
- `backup/`: `keras.callbacks.BackupAndRestore` state (this epoch's and the
  previous one's), so that a killed run started again with the same flags
  resumes at the epoch it stopped;
- `model.keras`: the model (and optimizer, SGS masks included) after the
  last finished epoch; `fused.keras` for `acb` / `repvgg`;
- `tensorboard/`: TensorBoard logs;
- `history.json`: every epoch's logs, across resumed runs;
- `masks.png`: the final SGS masks (`sgs_mi`, `sgs_constant`);
- `results.json`: test accuracy, timings and the run's settings.

JSON files are written atomically. The optimizer, the MI callback and
(for CIFAR) the augmentation are `keras_sgs.recipes`'s, with the flags'
values (`recipe_from_flags`).
"""

import dataclasses
import json
import os
import pathlib
import statistics
import warnings

import keras
import pipelines
import run_callbacks
import run_dir
import strategies
from absl import logging
from train_flags import CONV_TYPES
from train_flags import DEFINING_FLAGS
from train_flags import SGS_METHODS

import keras_sgs
from keras_sgs import recipes
from keras_sgs.models import build_model
from keras_sgs.reparam import fuse_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def kernels(model):
    """The conv and dense kernels of `model` (no biases, no norm weights)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            variable = getattr(layer, name, None)
            if variable is not None and variable.trainable:
                found.append(variable)
    return found


def recipe_from_flags(config, learning_rate):
    """The `keras_sgs.recipes.Recipe` of the flag values `config`, with
    `learning_rate` (`--lr`, scaled by the batch for ImageNet)."""
    return dataclasses.replace(
        recipes.CIFAR,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        refresh_every=config.refresh_every,
        refresh_warmup=config.refresh_warmup,
        refresh_batches=config.refresh_batches,
        mi_k=config.mi_k,
    )


def build(config, task, num_classes, recipe, total_steps):
    """`(model, optimizer)` of a run: `--model` with `--method`'s convs and
    the recipe's optimizer for `--method` (`repopt`: `baseline`'s with
    RepOptimizer's masks, see `repopt_masks`); coupled weight decay on the
    kernels only when `task.decay_kernels_only`. Call it in the
    strategy's scope."""
    model = build_model(
        config.model,
        num_classes,
        conv_type=CONV_TYPES.get(config.method, "plain"),
        input_shape=task.input_shape,
        width=config.width,
        head=task.head,
    )
    if config.method == "repopt":
        optimizer = recipes.optimizer(
            "baseline", total_steps, recipe, masks=repopt_masks(model, config)
        )
    else:
        optimizer = recipes.optimizer(config.method, total_steps, recipe)
    if task.decay_kernels_only:
        kept = {id(v) for v in kernels(model)}
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if id(v) not in kept]
        )
    return model, optimizer


def repopt_masks(model, config):
    """RepOptimizer with constant scales: starts every 3x3 `Conv2D` of
    `model` at the fused kernel of a CSLA block (3x3 + 1x1 + identity when
    the channels match, `keras_sgs.csla_conv`) and returns `{layer name:
    its per-output-channel gradient multiplier}`.

    The scales are `--repopt_scale_3x3` / `--repopt_scale_1x1`, or a
    layer's entry in `--repopt_scales_file`.
    """
    per_layer = {}
    if config.repopt_scales_file:
        with open(config.repopt_scales_file) as f:
            per_layer = json.load(f)
    masks = {}
    convs = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (3, 3)
    ]
    for index, layer in enumerate(convs):
        scales = per_layer.get(layer.name, {})
        in_channels, out_channels = layer.kernel.shape[-2:]
        mask, kernel = keras_sgs.csla_conv(
            (3, 3),
            in_channels,
            out_channels,
            scales.get("scale_3x3", config.repopt_scale_3x3),
            scales.get("scale_1x1", config.repopt_scale_1x1),
            seed=config.seed + 2 * index,
        )
        layer.kernel.assign(kernel)
        masks[layer.name] = mask
    unknown = sorted(set(per_layer) - set(masks))
    if unknown:
        raise ValueError(
            f"--repopt_scales_file={config.repopt_scales_file} names layers "
            f"that are not 3x3 convs of the model: {unknown}; they are "
            f"{sorted(masks)}."
        )
    return masks


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
                from_logits=True, name="cross_entropy"
            ),
        ],
    )


def run_flags(config, task):
    """`(defining, other)`: the flag values that define the run, and the
    rest (paths and how it runs), as recorded in `run_flags.json`."""
    names = DEFINING_FLAGS + task.defining_flags
    defining = {name: getattr(config, name) for name in names}
    other = {
        name: getattr(config, name, None)
        for name in ("tfds_data_dir", "strategy", "mixed_precision")
    }
    return defining, other


def train(config, task):
    """Trains, evaluates and writes `--output_dir`; returns the results.

    A run that already finished in `--output_dir` is not trained again:
    its `results.json` is returned.

    Args:
        config: the flag values (an object with one attribute per flag,
            e.g. `absl.flags.FLAGS` or a `types.SimpleNamespace`).
        task: `pipelines.Task`.

    Returns:
        The dict written to `results.json`.

    Raises:
        RuntimeError: another live run holds `--output_dir`.
    """
    strategy = strategies.make_strategy(config.strategy)  # before TF ops
    output_dir = strategies.worker_output_dir(
        config.output_dir
        or str(REPO / "runs" / task.name / f"{config.model}_{config.method}"),
        strategy,
    )
    with run_dir.locked(output_dir):
        return train_in(config, task, strategy, output_dir)


def train_in(config, task, strategy, output_dir):
    """`train` into `output_dir`, which this run holds. The run is recorded
    there once its flags and data have passed every check."""
    defining, other = run_flags(config, task)
    finished = run_dir.check_restart(
        output_dir, task.name, defining, config.overwrite
    )
    if finished:
        path = os.path.join(output_dir, "results.json")
        logging.info("%s: this run finished; nothing to train.", path)
        return run_dir.read_json(path, "pass --overwrite to train again.")

    keras.utils.clear_session()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.mixed_precision else "float32"
    )
    data = pipelines.load_data(config, task)
    pipelines.check_data(data, task, config.batch_size)
    workers = strategies.num_workers(strategy)
    train_ds = pipelines.shard_examples_if_few_files(
        pipelines.train_dataset(
            data.train, task, config.batch_size, config.seed
        ),
        data.train_files,
        workers,
    )
    test_ds = pipelines.shard_examples_if_few_files(
        pipelines.eval_dataset(data.test, task, config.batch_size, pad=True),
        data.test_files,
        workers,
    )
    held_out = pipelines.eval_dataset(
        data.train.take(config.refresh_batches * config.batch_size),
        task,
        config.batch_size,
    )
    steps = config.steps_per_epoch or data.num_train // config.batch_size
    learning_rate = config.lr
    if task.lr_reference_batch:
        learning_rate *= config.batch_size / task.lr_reference_batch
    recipe = recipe_from_flags(config, learning_rate)

    with strategy.scope():
        model, optimizer = build(
            config, task, data.num_classes, recipe, config.epochs * steps
        )
        compile_model(model, optimizer)
    run_dir.record_start(
        output_dir, task.name, defining, other, config.overwrite
    )
    history = run_callbacks.EpochHistory(
        os.path.join(output_dir, "history.json")
    )
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=steps,
        shuffle=False,  # `train_ds` is shuffled; `fit` shuffles arrays only
        callbacks=run_callbacks.make_callbacks(
            config, recipe, output_dir, history, held_out, strategy
        ),
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
    run_dir.write_json(os.path.join(output_dir, "results.json"), results)
    print(summary_line(results, output_dir), flush=True)
    return results


def epoch_timings(epochs):
    """Seconds per epoch (median, MI refreshes excluded) and MI refresh
    seconds (total) and count, from the `history.json` entries."""
    refreshes = [e.get("sgs_refresh_seconds") or 0.0 for e in epochs]
    return {
        "seconds_per_epoch": statistics.median(
            e["epoch_seconds"] for e in epochs
        ),
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

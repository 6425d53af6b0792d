"""The callbacks of the training scripts' `fit`."""

import importlib.util
import os
import time

import keras
import run_dir
import tensorflow as tf
from absl import logging

from keras_sgs import recipes

# Exit status of a run stopped by `--stop_after_epoch`.
STOPPED_EXIT_CODE = 75


class EpochHistory(keras.callbacks.Callback):
    """Keeps `history.json` (one list per log key, like `History.history`,
    plus `epoch` (1-based) and `epoch_seconds`) up to date after every
    epoch, written atomically. Entries of a resumed run replace those from
    the epoch it resumes at on.

    `epoch_seconds` runs from this callback's `on_epoch_begin` to its
    `on_epoch_end`: put it after `MIScalingCallback` to leave the refresh
    out (that is in `sgs_refresh_seconds`).

    Args:
        path: str. The `history.json` file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.epochs = []
        if os.path.exists(path):
            saved = run_dir.read_json(
                path,
                "delete it to resume without the earlier epochs' history, "
                "or pass --overwrite to start over.",
            )
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
        run_dir.write_json(
            self.path, {k: [e.get(k) for e in self.epochs] for k in keys}
        )


class Backup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that keeps the previous epoch's backup too (a
    truncated latest one falls back to it) and, when neither can be read,
    says which folder is broken and the way out."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"The backup in {self.backup_dir} cannot be read ({error}). "
                "Delete that folder to train this run again from epoch 1, "
                "or pass --overwrite to start over."
            ) from None


class StopAfterEpoch(keras.callbacks.Callback):
    """Ends the process after `epochs_done` epochs, like a killed job (for
    testing resumption)."""

    def __init__(self, epochs_done):
        super().__init__()
        self.epochs_done = epochs_done

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs_done:
            print(
                f"--stop_after_epoch={self.epochs_done}: exiting.", flush=True
            )
            os._exit(STOPPED_EXIT_CODE)


class AverageReplicaStatistics(keras.callbacks.Callback):
    """Averages the non-trainable float variables (batch-norm moving
    statistics) over the replicas at the end of every epoch.

    Under `tf.distribute`, Keras 3 updates each replica's copy of the
    moving statistics from that replica's part of the batch only
    (aggregation "none"), so the copies drift apart: the evaluation of
    each replica's share of a batch would use different statistics than
    the checkpoint, the MI refresh and the fused model (replica 0's).
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        variables = [
            v for v in self.model.non_trainable_variables if "float" in v.dtype
        ]

        def average():
            context = tf.distribute.get_replica_context()
            for variable in variables:
                variable.assign(
                    context.all_reduce(
                        tf.distribute.ReduceOp.MEAN, variable.value
                    )
                )

        self.strategy.run(average)


def make_callbacks(config, recipe, output_dir, history, held_out, strategy):
    """The callbacks of `fit`, in this order: the recipe's MI refresh
    (`sgs_mi`), `history`, the replica average (several replicas), the
    backup, the checkpoint, TensorBoard (when installed), the test stop."""
    callbacks = []
    if recipes.METHODS.get(config.method, recipes.Method()).learns_masks:
        callbacks.append(
            recipes.mi_callback(
                held_out, recipe, diagonal_removal=config.diagonal_removal
            )
        )
    callbacks.append(history)
    if strategy.num_replicas_in_sync > 1:
        callbacks.append(AverageReplicaStatistics(strategy))
    callbacks += [
        Backup(os.path.join(output_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output_dir, "model.keras")
        ),
    ]
    if importlib.util.find_spec("tensorboard"):
        callbacks.append(
            keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard"))
        )
    else:
        logging.warning("No TensorBoard logs: `pip install tensorboard`.")
    if config.stop_after_epoch:
        callbacks.append(StopAfterEpoch(config.stop_after_epoch))
    return callbacks

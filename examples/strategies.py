"""The `tf.distribute` strategy of `--strategy`, and where each worker of a
multi-worker run writes."""

import os

import tensorflow as tf


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
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
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


def num_workers(strategy):
    """The number of worker processes of `strategy` (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(
        spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs
    )


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

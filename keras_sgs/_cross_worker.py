"""The mean of `MIScalingCallback`'s estimates over the workers of a
multi-worker TensorFlow strategy."""

import keras

from keras_sgs._arrays import to_numpy


def mean_over_workers(model, masks):
    """The mean of each mask over the workers of a multi-worker TensorFlow
    strategy (e.g. `MultiWorkerMirroredStrategy`); `masks` otherwise.

    Each worker runs the callback on its own copy of the model, and state
    that `tf.distribute` does not synchronise (the `BatchNormalization`
    moving statistics, which each worker updates from its own shard) makes
    the estimates differ slightly from worker to worker. Unequal masks would
    scale the workers' steps differently (with `mode="update"` their models
    drift apart), so every worker assigns the mean.
    """
    if keras.backend.backend() != "tensorflow":
        return masks
    import tensorflow as tf

    strategy = model.distribute_strategy
    replicas = strategy.num_replicas_in_sync
    # One worker (the default strategy has no `worker_devices`): the
    # callback reads and sets every replica itself.
    if replicas == 1 or replicas == len(strategy.extended.worker_devices):
        return masks

    def all_reduce(values):
        # `tf.identity` places the values on the replica's device, which
        # `all_reduce` needs inside a `tf.function`.
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in values]
        )

    means = tf.function(lambda values: strategy.run(all_reduce, (values,)))(
        [tf.constant(m) for m in masks]
    )
    return [to_numpy(strategy.experimental_local_results(m)[0]) for m in means]

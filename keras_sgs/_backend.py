"""What `SGSWrapper` does differently per backend and distribution: eager
mask creation, traced-function detection, assignments from a replica, the
masks' layouts under `keras.distribution`."""

import contextlib

import keras

from keras_sgs import _keras_private as private


def eager_variable_creation():
    """`tf.init_scope()` on TensorFlow: masks are created eagerly even when
    the optimizer is first built inside a traced train step (Keras <= 3.15
    does not do this for optimizer variables, see keras#23085)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def inside_traced_function(value):
    """Whether this runs inside `tf.function` or with a JAX tracer."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.inside_function()
    if backend == "jax":
        import jax

        return any(
            isinstance(x, jax.core.Tracer) for x in keras.tree.flatten(value)
        )
    return False


def assign_in_replica_context(optimizer, variables, values):
    """Assigns `values` to `variables` from a replica's step of
    `optimizer`: on TensorFlow in cross-replica context of the optimizer's
    `tf.distribute` strategy, so that every replica's copy gets the
    value."""
    if keras.backend.backend() != "tensorflow":
        for variable, value in zip(variables, values):
            variable.assign(value)
        return

    def assign_all(distribution, pairs):
        for variable, value in pairs:
            distribution.extended.update(
                variable.value,
                lambda var, x: var.assign(x),
                args=(value,),
                group=False,
            )

    private.merge_call(
        assign_all,
        private.distribution_strategy(optimizer),
        list(zip(variables, values)),
    )


def mask_layout(mask_shape, kernel):
    """The layout of a kernel's mask under a `keras.distribution` (JAX's
    `DataParallel`, `ModelParallel`), `None` without one.

    Each axis that the mask shares in full with its kernel (the last axis
    of a per-output-channel mask) is sharded as the kernel's is; every
    other axis is replicated. Given explicitly, so that a `LayoutMap` key
    matching the kernel's path (e.g. `.*conv.*kernel.*`) never matches the
    mask's (`sgd/conv_kernel_sgs_mask`).
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    kernel_axes = getattr(
        distribution.get_variable_layout(kernel), "axes", None
    ) or (None,) * len(kernel.shape)
    axes = [
        axis if size == kernel_size else None
        for axis, size, kernel_size in zip(
            kernel_axes, mask_shape, kernel.shape
        )
    ]
    return keras.distribution.TensorLayout(axes, distribution.device_mesh)

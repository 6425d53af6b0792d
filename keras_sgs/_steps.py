"""The math of `SGSWrapper`'s step: masked gradients, the masked update,
coupled weight decay (pure functions on tensors), and the update mode's
whole step."""

from keras import ops

from keras_sgs import _keras_private as private
from keras_sgs._backend import assign_in_replica_context


def mask_gradients(grads, masks):
    """Each gradient times its mask (`None` masks and gradients pass)."""
    return [
        g if m is None or g is None else g * ops.cast(m, g.dtype)
        for g, m in zip(grads, masks)
    ]


def masked_step(old, new, mask):
    """`old + mask * (new - old)`: exactly `new` where the mask is 1 and
    exactly `old` where it is 0."""
    new = ops.convert_to_tensor(new)
    mask = ops.cast(mask, new.dtype)
    return ops.where(mask == 1, new, old + mask * (new - old))


def add_coupled_decay(grads, variables, decay, inner, masks=None):
    """`grad + decay * w` for each variable `inner` decays (PyTorch SGD's
    coupled weight decay); divided by the mask where `masks` are given
    (update mode, where the step is multiplied by it afterwards), and
    scaled like the gradient when `inner` unscales the loss.

    Args:
        grads: list of gradients (or `None`).
        variables: list of the variables, aligned with `grads`.
        decay: float or `None`. The coupled weight decay (`None` or 0:
            none).
        inner: the optimizer that takes the step: its
            `exclude_from_weight_decay` and `loss_scale_factor` apply.
        masks: `None`, or a list of masks (or `None`) aligned with `grads`.

    Returns:
        The list of gradients with the decay added.
    """
    if not decay:
        return grads
    masks = masks or [None] * len(grads)
    result = []
    for g, v, m in zip(grads, variables, masks):
        if (
            g is None
            or getattr(v, "overwrite_with_gradient", False)
            or not private.uses_weight_decay(inner, v)
        ):
            result.append(g)
            continue
        g_decay = ops.cast(v, g.dtype) * decay
        if inner.loss_scale_factor is not None:
            g_decay = g_decay * inner.loss_scale_factor
        if m is not None:
            m = ops.cast(m, g.dtype)
            g_decay = g_decay / ops.where(m > 0, m, ops.ones_like(m))
        result.append(g + g_decay)
    return result


def apply_masked_update(wrapper, grads, trainable_variables, variables, masks):
    """`wrapper.inner_optimizer.apply(grads, trainable_variables)` with each
    scaled kernel's step masked (`mode="update"`): the inner optimizer's
    decoupled weight decay is applied whole, then its step from the decayed
    value is multiplied by the mask.

    Args:
        wrapper: the `SGSWrapper` (its strategy assigns the values).
        grads: list of gradients, aligned with `variables`.
        trainable_variables: what `apply` received (`None`: all).
        variables: the variables the gradients belong to.
        masks: list of masks (or `None`), aligned with `variables`.
    """
    inner = wrapper.inner_optimizer
    scaled = [
        (v, m)
        for g, v, m in zip(grads, variables, masks)
        if m is not None and g is not None
    ]
    kernels = [v for v, _ in scaled]
    old_values = [ops.copy(v) for v in kernels]
    # The decay alone, by the inner optimizer's own rule (Muon decays conv
    # kernels with `adam_weight_decay`), then the whole step. Only on
    # kernels it decays: PyTorch's decay fails on an empty list.
    decaying = [v for v in kernels if private.uses_weight_decay(inner, v)]
    if decaying:
        private.apply_weight_decay(inner, decaying)
    decayed_values = [ops.copy(v) for v in kernels]
    assign_in_replica_context(wrapper, kernels, old_values)
    inner.apply(grads, trainable_variables)
    new_values = []
    for (variable, mask), decayed in zip(scaled, decayed_values):
        value = masked_step(decayed, variable, mask)
        if variable.constraint is not None:
            # Where every mask value is 1 the inner optimizer has
            # constrained `value` already (MaxNorm is not idempotent).
            value = ops.cond(
                ops.all(ops.equal(mask, 1)),
                lambda value=value: value,
                lambda value=value, c=variable.constraint: c(value),
            )
        new_values.append(value)
    assign_in_replica_context(wrapper, kernels, new_values)

"""The math of `SGSWrapper`'s step, as pure functions on tensors: masked
gradients, the masked update, coupled weight decay."""

from keras import ops

from keras_sgs import _keras_private as private


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

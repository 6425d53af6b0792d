"""What `SGSWrapper` takes from the optimizer it wraps: which optimizers it
can wrap, which ones a gradient mask (nearly) cancels in, and the settings
read and set through it."""

import warnings

import keras

MODES = ("gradient", "update")

# Optimizers that normalise each element of the gradient, so that a constant
# gradient mask (nearly) cancels; Lion's sign cancels it exactly.
_ADAPTIVE_OPTIMIZER_NAMES = (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "Adamax",
    "Ftrl",
    "Lamb",
    "Lion",
    "Muon",
    "Nadam",
    "RMSprop",
)


def _adaptive_optimizer_types():
    return tuple(
        getattr(keras.optimizers, name)
        for name in _ADAPTIVE_OPTIMIZER_NAMES
        if hasattr(keras.optimizers, name)
    )


def inner_attribute(name):
    """A property that reads and sets `inner_optimizer.<name>`.

    `Optimizer.__init__` sets every such attribute before `inner_optimizer`
    exists: that assignment is ignored, and reading gives None until then.
    """

    def get(self):
        inner = self.__dict__.get("inner_optimizer")
        return None if inner is None else getattr(inner, name)

    def set(self, value):
        inner = self.__dict__.get("inner_optimizer")
        if inner is not None:
            setattr(inner, name, value)

    return property(get, set, doc=f"The inner optimizer's `{name}`.")


def check_inner_optimizer(inner_optimizer, mode, wrapper_type):
    """Raises a `ValueError` unless `SGSWrapper` (`wrapper_type`) can wrap
    `inner_optimizer` in `mode`; warns when the mode is `"gradient"` and
    the optimizer normalises each gradient element."""
    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {MODES}. Received: mode={mode!r}"
        )
    if isinstance(inner_optimizer, wrapper_type):
        raise ValueError(
            "`inner_optimizer` is already an SGSWrapper; wrap the plain "
            f"optimizer once. Received: inner_optimizer={inner_optimizer}"
        )
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "`inner_optimizer` must not be a LossScaleOptimizer: wrap the "
            "plain optimizer and let `compile()` add loss scaling outside "
            "(LossScaleOptimizer(SGSWrapper(...))) under mixed_float16. "
            f"Received: inner_optimizer={inner_optimizer}"
        )
    if hasattr(inner_optimizer, "optimizers"):
        raise ValueError(
            "`inner_optimizer` must not be a MultiOptimizer: put the "
            "SGSWrapper around the sub-optimizer that trains the conv "
            f"layers. Received: inner_optimizer={inner_optimizer}"
        )
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`inner_optimizer` must be a keras.optimizers.Optimizer "
            f"instance. Received: inner_optimizer={inner_optimizer!r} of "
            f"type {type(inner_optimizer).__name__}"
        )
    if mode == "update" and (
        inner_optimizer.gradient_accumulation_steps or inner_optimizer.use_ema
    ):
        raise ValueError(
            "mode='update' cannot mask the step of an inner optimizer "
            "that accumulates gradients or averages the weights (its "
            "average would follow the unmasked steps). Use "
            "mode='gradient'. Received: gradient_accumulation_steps="
            f"{inner_optimizer.gradient_accumulation_steps}, "
            f"use_ema={inner_optimizer.use_ema}"
        )
    if mode == "gradient" and isinstance(
        inner_optimizer, _adaptive_optimizer_types()
    ):
        warnings.warn(
            f"SGSWrapper(mode='gradient') around "
            f"{type(inner_optimizer).__name__}: this optimizer "
            "normalises each gradient element, so a constant gradient "
            "mask (nearly) cancels. Use mode='update' to scale its "
            "steps instead.",
            stacklevel=3,
        )

"""`SGSWrapper`: spatial gradient scaling around any Keras optimizer."""

import contextlib
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_sgs import _keras_private as private
from keras_sgs import masks as masks_lib
from keras_sgs._numbers import is_real
from keras_sgs.conv_kernels import conv_kernel_owners

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


def _eager_variable_creation():
    """`tf.init_scope()` on TensorFlow: masks are created eagerly even when
    the optimizer is first built inside a traced train step (Keras <= 3.15
    does not do this for optimizer variables, see keras#23085)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def _inside_traced_function(value):
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


def _initial_masks_from_argument(masks):
    """Validates the `masks=` argument; returns None, an array, a dict or
    a callable."""
    if masks is None:
        return None
    if callable(masks):
        return masks
    if isinstance(masks, dict):
        result = {}
        for key, value in masks.items():
            if not isinstance(key, str):
                raise TypeError(
                    "The keys of `masks` must be layer names or variable "
                    f"paths (str). Received: key={key!r}"
                )
            result[key] = _as_mask_array(value, f"masks[{key!r}]")
        return result
    return _as_mask_array(masks, "masks")


def _as_mask_array(value, name):
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be an array of numbers or a dict of them. "
            f"Received: {name}={value!r}"
        ) from None
    if not 1 <= array.ndim <= 5 or array.size == 0:
        raise ValueError(
            f"`{name}` must be a mask of the kernel's spatial shape, e.g. "
            f"(3, 3). Received: {name} with shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(
            f"`{name}` must be finite and non-negative. Received: "
            f"{name}={array.tolist()}"
        )
    return array


def _inner_attribute(name):
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


@keras.saving.register_keras_serializable(package="keras_sgs")
class SGSWrapper(keras.optimizers.Optimizer):
    """An optimizer that applies spatial gradient scaling to conv kernels.

    Spatial gradient scaling (SGS, Detkov et al., ICLR 2023) multiplies the
    gradient of every convolution kernel `W` of spatial size `kh x kw` by a
    small spatial matrix `S` (the *mask*), broadcast over the channel axes,
    before the wrapped optimizer takes its step:

    ```python
    grad = S * grad      # S has shape (kh, kw, 1, 1), mean 1
    inner_optimizer.apply(grad)
    ```

    With SGD (with or without momentum, Nesterov or decoupled weight decay)
    this gives exactly the training dynamics of a block of parallel conv
    branches (ACNet, RepVGG) without building the branches; see
    `mask_from_branches`. `MIScalingCallback` learns `S` per layer from
    data. Masks start at ones (plain training) unless `masks=` says
    otherwise.

    Which variables are scaled: the `kernel` of `Conv1D/2D/3D` and
    `Conv1D/2D/3DTranspose`, the `depthwise_kernel` of `DepthwiseConv1D/2D`
    and `SeparableConv1D/2D`, when the kernel has more than one spatial
    position. The selection goes through the layer objects that own the
    variables (see `keras_sgs.conv_kernels`), never through names or shapes,
    so a `Dense`, `EinsumDense` / `MultiHeadAttention` or `Embedding` kernel,
    a bias, a normalisation weight or a 1x1 kernel is never scaled.

    Modes:

    - `"gradient"` (the paper): the loss gradient is masked before the inner
      optimizer sees it, so the inner optimizer's clipping (`clipnorm`,
      `clipvalue`, `global_clipnorm`) acts on the *masked* gradient (the
      authors clip before masking; leave clipping off, or expect a
      slightly different clip threshold). Decoupled `weight_decay` is
      computed from the variable and is not masked. For adaptive
      optimizers (Adam, RMSprop, Lion, ...) a constant gradient mask
      (nearly) cancels, and a warning says so.
    - `"update"`: the inner optimizer steps as usual, then the step it took
      on each scaled kernel is masked, `W <- W_old + S * (W_new - W_old)`,
      which is how branched training scales Adam-like updates (a position
      whose mask is 0 stays exactly where it was). Decoupled
      weight decay is taken out of the masked part and applied unscaled,
      as each branch would decay by itself; constraints are applied again
      after masking (once: not where every mask value is 1). Not available
      with `gradient_accumulation_steps` or `use_ema` on the inner
      optimizer, whose accumulators and averages would follow the unmasked
      steps.

    Coupled weight decay (`coupled_weight_decay=wd`), PyTorch's
    `SGD(weight_decay=wd)` that the authors train with: each step adds
    `wd * w` to the gradient of every trainable variable that the inner
    optimizer does not exclude from weight decay (see
    `exclude_from_weight_decay`), *after* the mask and before the inner
    optimizer, so the decay goes through momentum but is never masked
    (an L2 penalty in the loss would be masked with the rest, and is lost
    from a reloaded `.keras` model). With SGD the step is

    ```python
    buffer = momentum * buffer + (S * grad + wd * w)
    w = w - learning_rate * buffer
    ```

    In `"update"` mode the decay belongs to the unmasked part of the step,
    as a branch decays by itself: the inner optimizer receives
    `grad + wd * w / S` and its step is multiplied by `S`, which for SGD is
    exactly the step above (positions where `S` is 0 take no step at all).
    The inner optimizer's clipping sees the gradient with the decay added
    (the authors clip before both); its decoupled `weight_decay`, if any,
    applies as well.

    Masks are float32 optimizer variables (one per scaled kernel, of the
    shape of its initial mask: `kernel.shape[:-2] + (1, 1)` by default,
    `kernel.shape[:-2] + (1, out)` for RepOptimizer's per-output-channel
    multipliers, see `csla_conv`, or any shape that broadcasts to the
    kernel): a callback can change them between steps
    without retracing, they are saved with the optimizer (`.keras`,
    `.weights.h5`, `tf.train.Checkpoint`) and mirrored under
    `tf.distribute`. Learning rate, iterations, loss scaling, weight decay
    exclusion, EMA finalisation and the settings (`clipnorm`, `use_ema`,
    `weight_decay`, ...) are the inner optimizer's.
    Under `mixed_float16`, Keras wraps this optimizer in a
    `LossScaleOptimizer`, which works.

    Example:

    ```python
    model.compile(
        optimizer=keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.1, momentum=0.9)
        ),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(ds, callbacks=[keras_sgs.MIScalingCallback(images)])

    # Or a fixed mask: ACNet's 3x3 + 1x3 + 3x1 dynamics for every 3x3 conv.
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9),
        masks=keras_sgs.mask_from_branches(
            (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
        ),
    )
    ```

    Args:
        inner_optimizer: `keras.optimizers.Optimizer` instance (or a name or
            config `keras.optimizers.get` understands) that takes the step.
            Not a `LossScaleOptimizer`, a `MultiOptimizer` or another
            `SGSWrapper`.
        mode: `"gradient"` or `"update"`, see above. Defaults to
            `"gradient"`.
        masks: initial masks. `None` (all ones), one array used for every
            scaled kernel it fits (e.g. `(3, 3)`), a dict from layer name or
            variable path to an array, or a function
            `(layer, kernel_variable) -> array or None` called for each
            scaled kernel when the optimizer is built (`None`: ones).
            An array has the kernel's spatial shape, or the kernel's rank
            and broadcasts to the kernel: `(kh, kw, 1, 1)`, per output
            channel `(kh, kw, 1, out)` (for transposed convs, whose kernels
            are `(kh, kw, out, in)`: `(kh, kw, out, 1)`) or the full kernel
            shape. A mask that matches no scaled kernel, does not broadcast
            to its kernel, or a function that raises, raises a
            `ValueError` naming the layer when the optimizer is built.
            A function is serialized as Keras serializes activations: by
            name when registered with
            `keras.saving.register_keras_serializable()` (a plain function
            cannot be found again at loading), as bytecode for a `lambda`
            (loading it needs `safe_mode=False`). Defaults to `None`.
        coupled_weight_decay: float >= 0 or `None`. Adds
            `coupled_weight_decay * w` to each gradient after the mask, see
            above. Defaults to `None` (no coupled decay).
        name: String. The name of the optimizer. Defaults to the inner
            optimizer's name, which Keras reports (e.g. TensorBoard's
            `learning_rate_{name}` for each part of a `MultiOptimizer`).
    """

    def __init__(
        self,
        inner_optimizer,
        mode="gradient",
        masks=None,
        coupled_weight_decay=None,
        name=None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(
                "SGSWrapper takes no base optimizer arguments; set them on "
                f"the `inner_optimizer`. Received: {sorted(kwargs)}"
            )
        if isinstance(inner_optimizer, (str, dict)):
            inner_optimizer = keras.optimizers.get(inner_optimizer)
        _check_inner_optimizer(inner_optimizer)
        super().__init__(
            learning_rate=0.0,
            name=inner_optimizer.name if name is None else name,
        )
        if mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={mode!r}"
            )
        if mode == "update" and (
            inner_optimizer.gradient_accumulation_steps
            or inner_optimizer.use_ema
        ):
            raise ValueError(
                "mode='update' cannot mask the step of an inner optimizer "
                "that accumulates gradients or averages the weights (its "
                "average would follow the unmasked steps). Use "
                "mode='gradient'. Received: gradient_accumulation_steps="
                f"{inner_optimizer.gradient_accumulation_steps}, "
                f"use_ema={inner_optimizer.use_ema}"
            )
        self.inner_optimizer = inner_optimizer
        self.mode = mode
        self.coupled_weight_decay = _check_coupled_weight_decay(
            coupled_weight_decay
        )
        self._initial_masks = _initial_masks_from_argument(masks)
        self._masks = []
        if mode == "gradient" and isinstance(
            inner_optimizer, _adaptive_optimizer_types()
        ):
            warnings.warn(
                f"SGSWrapper(mode='gradient') around "
                f"{type(inner_optimizer).__name__}: this optimizer "
                "normalises each gradient element, so a constant gradient "
                "mask (nearly) cancels. Use mode='update' to scale its "
                "steps instead.",
                stacklevel=2,
            )

    # -- building -----------------------------------------------------------

    def build(self, var_list):
        var_list = list(var_list)
        self._build_masks(var_list)
        # Outside `_build_masks`'s no-tracking scope: some optimizers
        # (Nadam, Adafactor) create variables in `build` that only
        # attribute tracking finds.
        self.inner_optimizer.build(var_list)
        self._build_variable_index(var_list)

    @private.no_automatic_dependency_tracking
    def _build_variable_index(self, var_list):
        # What `Optimizer.build` records, without the EMA and gradient
        # accumulators it would add here: the inner optimizer keeps those
        # (`use_ema` and `gradient_accumulation_steps` read the inner's).
        self._trainable_variables_indices = {
            self._var_key(v): i for i, v in enumerate(var_list)
        }
        self._trainable_variables = var_list[:]
        self.built = True

    @private.no_automatic_dependency_tracking
    def _build_masks(self, var_list):
        owners = conv_kernel_owners(var_list)
        unused = self._unused_mask_keys()
        self._masks = []
        with _eager_variable_creation():
            for variable in var_list:
                layer = owners.get(id(variable))
                if layer is None:
                    self._masks.append(None)
                    continue
                value = self._initial_mask(variable, layer, unused)
                self._masks.append(
                    self.add_variable(
                        shape=value.shape,
                        initializer=lambda shape, dtype, value=value: ops.cast(
                            value, dtype
                        ),
                        dtype="float32",
                        aggregation="only_first_replica",
                        layout=_mask_layout(value.shape, variable),
                        name=f"{variable.path.replace('/', '_')}_sgs_mask",
                    )
                )
        if var_list and not owners:
            warnings.warn(
                f"SGSWrapper found no conv kernel to scale among the "
                f"{len(var_list)} variables it optimizes, so it acts exactly "
                "as its inner optimizer. Kernels are found through the live "
                "conv layers that own them, with more than one spatial "
                "position (1x1 kernels are never scaled).",
                stacklevel=2,
            )
        if unused:
            raise ValueError(
                "Some `masks` of this SGSWrapper match no scaled conv "
                f"kernel. Unused: {sorted(unused)}. Scaled kernels: "
                f"{[v.path for v in var_list if id(v) in owners]}"
            )

    def _unused_mask_keys(self):
        if self._initial_masks is None or callable(self._initial_masks):
            return set()
        if isinstance(self._initial_masks, dict):
            return set(self._initial_masks)
        return {f"array of shape {self._initial_masks.shape}"}

    def _initial_mask(self, variable, layer, unused):
        """The starting value of one kernel's mask; marks what it used."""
        kernel_shape = tuple(variable.shape)
        initial = self._initial_masks
        value, name = None, "masks"
        if isinstance(initial, dict):
            for key in (layer.name, variable.path):
                if key in initial:
                    unused.discard(key)
                    value, name = initial[key], f"masks[{key!r}]"
                    break
        elif callable(initial):
            value, name = _call_mask_function(initial, layer, variable)
        elif initial is not None and (
            initial.shape == kernel_shape[:-2]
            or masks_lib.broadcasts_to(initial.shape, kernel_shape)
        ):
            unused.clear()
            value = initial
        if value is None:
            return np.ones(kernel_shape[:-2] + (1, 1), dtype=np.float32)
        try:
            return masks_lib.kernel_mask(value, kernel_shape, name)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"The mask for layer '{layer.name}' (kernel "
                f"{variable.path} of shape {kernel_shape}) is invalid: "
                f"{error} (mask shape {np.shape(value)})"
            ) from None

    @property
    def variables(self):
        """The inner optimizer's variables (its step count first), then the
        masks: what `SGD` saves, `SGSWrapper(SGD)` saves first."""
        return self.inner_optimizer.variables + [
            m for m in self._masks if m is not None
        ]

    def set_weights(self, weights):
        """Assigns `weights`, one array per variable of `variables`."""
        if not self.built:
            # Keras's words for the same mistake.
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has "
                "not yet been built. Please call "
                "`optimizer.build(trainable_variables)` to create the "
                "optimizer weights before calling `set_weights()`."
            )
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(
                f"`weights` must hold {len(variables)} arrays, one per "
                f"variable of `optimizer.variables`. Received: "
                f"{len(weights)} arrays"
            )
        for variable, weight in zip(variables, weights):
            if tuple(variable.shape) != tuple(np.shape(weight)):
                raise ValueError(
                    f"`weights` must match the shapes of `optimizer."
                    f"variables`. Received: shape {tuple(np.shape(weight))} "
                    f"for {variable.path} of shape {tuple(variable.shape)}"
                )
            variable.assign(weight)

    def load_own_variables(self, store):
        if not self.built:
            # Nothing to load into. Keras loads the inner optimizer's own
            # entry next, which warns once, as for a plain optimizer.
            return
        # The state of a plain optimizer (`SGD`, saved without masks) is the
        # inner optimizer's state; the masks keep their values.
        if (
            len(store.keys())
            == len(self.inner_optimizer.variables)
            < len(self.variables)
        ):
            self.inner_optimizer.load_own_variables(store)
            return
        super().load_own_variables(store)

    # -- masks --------------------------------------------------------------

    def get_mask(self, variable):
        """Returns the mask variable of a model variable, or `None`.

        Args:
            variable: a model variable this optimizer was built with.

        Returns:
            The float32 `keras.Variable` holding the mask, or `None` if the
            variable is not a scaled conv kernel. Its shape is that of the
            initial mask: `variable.shape[:-2] + (1, 1)` by default, or any
            shape that broadcasts to the kernel (e.g. per output channel).
        """
        return self._masks[self._index_of(variable)]

    def set_mask(self, variable, value):
        """Validates `value` and assigns it as the mask of `variable`.

        Call it outside the train step (e.g. in a callback): under
        `tf.distribute` the assignment reaches every replica.

        Args:
            variable: a scaled conv kernel this optimizer was built with.
            value: array-like of the mask variable's shape (see
                `get_mask`), or a spatial mask (`variable.shape[:-2]`,
                optionally followed by `(1, 1)`) that is broadcast to it
                over the channels; finite and non-negative.
        """
        if _inside_traced_function(value):
            raise RuntimeError(
                "SGSWrapper.set_mask() was called inside a traced function "
                "(a train step under tf.function / jax.jit). Call it between "
                "steps instead, e.g. from a callback's on_epoch_begin or "
                "on_batch_begin."
            )
        mask = self.get_mask(variable)
        if mask is None:
            raise ValueError(
                "`variable` is not a conv kernel scaled by this SGSWrapper. "
                f"Received: variable={variable.path} with shape "
                f"{tuple(variable.shape)}"
            )
        mask.assign(masks_lib.mask_value(value, tuple(mask.shape)))

    def _index_of(self, variable):
        if not self.built:
            raise ValueError(
                "This SGSWrapper is not built yet: call "
                "`optimizer.build(model.trainable_variables)` or train a "
                "step first."
            )
        try:
            return self._get_variable_index(variable)
        except (KeyError, AttributeError, TypeError):
            raise ValueError(
                "`variable` is not one of the variables this optimizer was "
                f"built with. Received: variable={variable!r}"
            ) from None

    # -- applying -----------------------------------------------------------

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return  # as any optimizer: nothing to do, nothing to build
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "When passing `grads` without `trainable_variables`, the "
                    "optimizer must already be built. Call "
                    "`optimizer.build(trainable_variables)` first."
                )
            trainable_variables = list(trainable_variables)
            # No name scope of the wrapper's here: the inner optimizer's
            # variables get the paths they have without the wrapper.
            self.build(trainable_variables)
        if trainable_variables is None:
            variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            self._check_variables_are_known(trainable_variables)
            variables = trainable_variables
        masks = [self._masks[self._get_variable_index(v)] for v in variables]
        if self.mode == "gradient":
            grads = apply_masks(grads, masks)
            grads = self._add_coupled_decay(grads, variables)
            self.inner_optimizer.apply(grads, trainable_variables)
        else:
            grads = self._add_coupled_decay(grads, variables, masks)
            self._apply_masked_update(
                grads, trainable_variables, variables, masks
            )

    def update_step(self, gradient, variable, learning_rate):
        """The inner optimizer's `update_step` on one variable, masked.

        As `apply` does for each variable, without clipping, decoupled
        weight decay or counting the step: in `"gradient"` mode the inner
        optimizer steps on the masked gradient, in `"update"` mode its step
        is masked.

        Args:
            gradient: the gradient of `variable`.
            variable: a model variable this optimizer was built with.
            learning_rate: the learning rate of this step.
        """
        masks = [self._masks[self._index_of(variable)]]
        inner = self.inner_optimizer
        if self.mode == "gradient" or masks[0] is None:
            (gradient,) = self._add_coupled_decay(
                apply_masks([gradient], masks), [variable]
            )
            inner.update_step(gradient, variable, learning_rate)
            return
        (gradient,) = self._add_coupled_decay([gradient], [variable], masks)
        old = ops.copy(variable)
        inner.update_step(gradient, variable, learning_rate)
        value = ops.convert_to_tensor(variable)
        mask = ops.cast(masks[0], variable.dtype)
        self.assign(
            variable, ops.where(mask == 1, value, old + mask * (value - old))
        )

    def _add_coupled_decay(self, grads, variables, masks=None):
        """`grad + wd * w` for the variables the inner optimizer decays;
        divided by the mask when `masks` are given (update mode), scaled
        like the gradient when the inner optimizer unscales the loss."""
        if not self.coupled_weight_decay:
            return grads
        inner = self.inner_optimizer
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
            decay = ops.cast(v, g.dtype) * self.coupled_weight_decay
            if inner.loss_scale_factor is not None:
                decay = decay * inner.loss_scale_factor
            if m is not None:
                m = ops.cast(m, g.dtype)
                decay = decay / ops.where(m > 0, m, ops.ones_like(m))
            result.append(g + decay)
        return result

    def _apply_masked_update(
        self, grads, trainable_variables, variables, masks
    ):
        inner = self.inner_optimizer
        scaled = [
            (v, m)
            for g, v, m in zip(grads, variables, masks)
            if m is not None and g is not None
        ]
        kernels = [v for v, _ in scaled]
        old_values = [ops.copy(v) for v in kernels]
        # The decay alone, by the inner optimizer's own rule (Muon decays
        # conv kernels with `adam_weight_decay`), then the whole step. Only
        # on kernels it decays: PyTorch's decay fails on an empty list.
        decaying = [v for v in kernels if private.uses_weight_decay(inner, v)]
        if decaying:
            private.apply_weight_decay(inner, decaying)
        decayed_values = [ops.copy(v) for v in kernels]
        self._assign_in_replica_context(kernels, old_values)
        inner.apply(grads, trainable_variables)
        new_values = []
        for (variable, mask), decayed in zip(scaled, decayed_values):
            value = ops.convert_to_tensor(variable)
            mask = ops.cast(mask, variable.dtype)
            # Where the mask is 0 the result is `decayed` exactly, where it
            # is 1 the inner optimizer's value exactly.
            value = ops.where(
                mask == 1, value, decayed + mask * (value - decayed)
            )
            if variable.constraint is not None:
                # Where every mask value is 1 the inner optimizer has
                # constrained `value` already (MaxNorm is not idempotent).
                value = ops.cond(
                    ops.all(mask == 1),
                    lambda value=value: value,
                    lambda value=value, c=variable.constraint: c(value),
                )
            new_values.append(value)
        self._assign_in_replica_context(kernels, new_values)

    def _assign_in_replica_context(self, variables, values):
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
            self._distribution_strategy,
            list(zip(variables, values)),
        )

    # -- forwarded to the inner optimizer ------------------------------------

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    # The inner optimizer's own settings, read and set through the wrapper
    # (`SwapEMAWeights` looks for `use_ema` on each part of a
    # `MultiOptimizer`; `LossScaleOptimizer` sets `loss_scale_factor` to
    # None to avoid double unscaling).
    weight_decay = _inner_attribute("weight_decay")
    clipnorm = _inner_attribute("clipnorm")
    clipvalue = _inner_attribute("clipvalue")
    global_clipnorm = _inner_attribute("global_clipnorm")
    use_ema = _inner_attribute("use_ema")
    ema_momentum = _inner_attribute("ema_momentum")
    ema_overwrite_frequency = _inner_attribute("ema_overwrite_frequency")
    loss_scale_factor = _inner_attribute("loss_scale_factor")
    gradient_accumulation_steps = _inner_attribute(
        "gradient_accumulation_steps"
    )

    @property
    def _model_variables_moving_average(self):
        # What `keras.callbacks.SwapEMAWeights` swaps, also when the wrapper
        # sits inside a `LossScaleOptimizer` (mixed precision).
        return private.moving_averages(self.inner_optimizer)

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.inner_optimizer.exclude_from_weight_decay(
            var_list=var_list, var_names=var_names
        )

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # -- serialization ----------------------------------------------------

    def get_config(self):
        # Like LossScaleOptimizer: the base arguments live on the inner one.
        initial = self._initial_masks
        if callable(initial):
            # As Keras does for activations and `Lambda` layers.
            initial = keras.saving.serialize_keras_object(initial)
        elif isinstance(initial, dict):
            initial = {k: v.tolist() for k, v in initial.items()}
        elif initial is not None:
            initial = initial.tolist()
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "mode": self.mode,
            "masks": initial,
            "coupled_weight_decay": self.coupled_weight_decay,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner_optimizer = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        if _is_serialized_function(config.get("masks")):
            config["masks"] = keras.saving.deserialize_keras_object(
                config["masks"], custom_objects=custom_objects
            )
        return cls(inner_optimizer, **config)


SpatialGradientScaling = SGSWrapper


def _mask_layout(mask_shape, kernel):
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


def _call_mask_function(function, layer, variable):
    """`function(layer, variable)` for `masks=`; a failure names the
    layer and the kernel. Returns `(value, name for errors)`."""
    try:
        value = function(layer, variable)
    except Exception as error:
        raise ValueError(
            f"The `masks` function raised for layer '{layer.name}' (kernel "
            f"{variable.path} of shape {tuple(variable.shape)}): "
            f"{type(error).__name__}: {error}"
        ) from error
    return value, f"masks({layer.name!r}, {variable.path!r})"


def _is_serialized_function(config):
    """Whether a `masks` config entry is a serialized function or lambda
    (an array or a dict of arrays otherwise)."""
    return isinstance(config, dict) and config.get("class_name") in (
        "function",
        "__lambda__",
    )


def apply_masks(grads, masks):
    """Multiplies each gradient by its mask (`None` masks pass through).

    Args:
        grads: list of gradient tensors (or `None`).
        masks: list, aligned with `grads`, of mask tensors that broadcast
            to their kernel (e.g. `kernel.shape[:-2] + (1, 1)`) or `None`.

    Returns:
        The list of masked gradients, each in its own dtype.
    """
    return [
        g if m is None or g is None else g * ops.cast(m, g.dtype)
        for g, m in zip(grads, masks)
    ]


def _check_coupled_weight_decay(value):
    """Returns `value` as a float >= 0, or `None`."""
    if value is None:
        return None
    if not is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(
            "`coupled_weight_decay` must be a finite number >= 0 or None. "
            f"Received: coupled_weight_decay={value!r}"
        )
    return float(value)


def _check_inner_optimizer(inner_optimizer):
    if isinstance(inner_optimizer, SGSWrapper):
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
        raise TypeError(
            "`inner_optimizer` must be a keras.optimizers.Optimizer "
            f"instance. Received: inner_optimizer={inner_optimizer!r} of "
            f"type {type(inner_optimizer).__name__}"
        )

"""`SGSWrapper`: spatial gradient scaling around any Keras optimizer."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_sgs import _keras_private as private
from keras_sgs import _mask_argument
from keras_sgs import masks as masks_lib
from keras_sgs._backend import eager_variable_creation
from keras_sgs._backend import inside_traced_function
from keras_sgs._backend import mask_layout
from keras_sgs._checks import check_number
from keras_sgs._inner_optimizer import MODES  # noqa: F401 (public name)
from keras_sgs._inner_optimizer import check_inner_optimizer
from keras_sgs._inner_optimizer import inner_attribute
from keras_sgs._steps import add_coupled_decay
from keras_sgs._steps import apply_masked_update
from keras_sgs._steps import mask_gradients
from keras_sgs._steps import masked_step
from keras_sgs.conv_kernels import conv_kernel_owners
from keras_sgs.conv_kernels import spatial_kernels


@keras.saving.register_keras_serializable(package="keras_sgs")
class SGSWrapper(keras.optimizers.Optimizer):
    """An optimizer that applies spatial gradient scaling to conv kernels.

    Spatial gradient scaling (SGS, Detkov et al., ICLR 2023) multiplies the
    gradient of every convolution kernel `W` of spatial size `kh x kw` by a
    small spatial matrix `S` (the *mask*), broadcast over the channel axes,
    before `inner_optimizer` takes its step. With SGD and a fixed mask this
    is exactly the training of a block of constant-scale parallel branches
    (see `mask_from_branches`); `MIScalingCallback` learns `S` per layer
    from data. Masks start at ones (plain training) unless `masks=` says
    otherwise.

    The scaled variables are the `kernel` of `Conv1D/2D/3D(Transpose)` and
    the `depthwise_kernel` of `DepthwiseConv1D/2D` and `SeparableConv1D/2D`
    with more than one spatial position, found through the layers that own
    them (never by name or shape). Masks are float32 optimizer variables:
    saved with the optimizer, mirrored under `tf.distribute`, changed
    between steps by `set_mask` without retracing. Learning rate,
    iterations, loss scaling, EMA and the settings (`clipnorm`,
    `weight_decay`, ...) are the inner optimizer's.

    The modes, weight decay, clipping, mask shapes, distribution and saving
    are described in docs/guide.md ("SGSWrapper").

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
        mode: `"gradient"` (the paper: the gradient is masked) or
            `"update"` (the inner optimizer's step is masked,
            `W <- W_old + S * (W_new - W_old)`, as branches scale the steps
            of Adam-like optimizers). Defaults to `"gradient"`.
        masks: initial masks. `None` (ones), one array used for every
            scaled kernel it fits (e.g. shape `(3, 3)`), a dict from layer
            name or variable path to an array, or a function
            `(layer, kernel) -> array or None` called for each scaled kernel
            at build. An array has the kernel's spatial shape or broadcasts
            to the kernel (e.g. `(kh, kw, 1, out)` per output channel).
            Defaults to `None`.
        coupled_weight_decay: float >= 0 or `None`. PyTorch's
            `SGD(weight_decay=...)`, which the authors train with: adds
            `coupled_weight_decay * w` to each decayed variable's gradient
            after the mask, before the inner optimizer. Defaults to `None`.
        name: String. Defaults to the inner optimizer's name.
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
        check_inner_optimizer(inner_optimizer, mode, SGSWrapper)
        super().__init__(
            learning_rate=0.0,
            name=inner_optimizer.name if name is None else name,
        )
        self.inner_optimizer = inner_optimizer
        self.mode = mode
        if coupled_weight_decay is not None:
            coupled_weight_decay = check_number(
                "coupled_weight_decay", coupled_weight_decay, minimum=0
            )
        self.coupled_weight_decay = coupled_weight_decay
        self._initial_masks = _mask_argument.parse(masks)
        self._masks = []

    # -- building -----------------------------------------------------------

    def build(self, var_list):
        var_list = list(var_list)
        self._build_masks(var_list)
        # Outside `_build_masks`'s no-tracking scope: some optimizers
        # (Nadam, Adafactor) create variables in `build` that only
        # attribute tracking finds.
        self.inner_optimizer.build(var_list)
        # What `Optimizer.build` records, without the EMA and gradient
        # accumulators it would add here: the inner optimizer keeps those.
        private.record_variables(self, var_list)
        self.built = True

    @private.no_automatic_dependency_tracking
    def _build_masks(self, var_list):
        owners = conv_kernel_owners(var_list)
        unused = _mask_argument.keys_to_use(self._initial_masks)
        self._masks = []
        with eager_variable_creation():
            for variable in var_list:
                layer = owners.get(id(variable))
                if layer is None:
                    self._masks.append(None)
                    continue
                value, used = _mask_argument.initial_mask(
                    self._initial_masks, layer, variable
                )
                unused.discard(used)
                self._masks.append(
                    self.add_variable(
                        shape=value.shape,
                        initializer=lambda shape, dtype, value=value: ops.cast(
                            value, dtype
                        ),
                        dtype="float32",
                        aggregation="only_first_replica",
                        layout=mask_layout(value.shape, variable),
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
                _mask_argument.unused_message(
                    unused,
                    self._initial_masks,
                    [v.path for v in var_list if id(v) in owners],
                )
            )

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
        if inside_traced_function(value):
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
            return private.variable_index(self, variable)
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
            variables = private.built_variables(self)
        else:
            trainable_variables = list(trainable_variables)
            private.check_variables_are_known(self, trainable_variables)
            variables = trainable_variables
        masks = [
            self._masks[private.variable_index(self, v)] for v in variables
        ]
        if self.mode == "gradient":
            grads = mask_gradients(grads, masks)
            grads = self._add_coupled_decay(grads, variables)
            self.inner_optimizer.apply(grads, trainable_variables)
        else:
            grads = self._add_coupled_decay(grads, variables, masks)
            apply_masked_update(
                self, grads, trainable_variables, variables, masks
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
        mask = self._masks[self._index_of(variable)]
        inner = self.inner_optimizer
        if self.mode == "gradient" or mask is None:
            (gradient,) = self._add_coupled_decay(
                mask_gradients([gradient], [mask]), [variable]
            )
            inner.update_step(gradient, variable, learning_rate)
            return
        (gradient,) = self._add_coupled_decay([gradient], [variable], [mask])
        old = ops.copy(variable)
        inner.update_step(gradient, variable, learning_rate)
        self.assign(variable, masked_step(old, variable, mask))

    def _add_coupled_decay(self, grads, variables, masks=None):
        return add_coupled_decay(
            grads,
            variables,
            self.coupled_weight_decay,
            self.inner_optimizer,
            masks,
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
    weight_decay = inner_attribute("weight_decay")
    clipnorm = inner_attribute("clipnorm")
    clipvalue = inner_attribute("clipvalue")
    global_clipnorm = inner_attribute("global_clipnorm")
    use_ema = inner_attribute("use_ema")
    ema_momentum = inner_attribute("ema_momentum")
    ema_overwrite_frequency = inner_attribute("ema_overwrite_frequency")
    loss_scale_factor = inner_attribute("loss_scale_factor")
    gradient_accumulation_steps = inner_attribute("gradient_accumulation_steps")

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
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "mode": self.mode,
            "masks": _mask_argument.to_config(self._initial_masks),
            "coupled_weight_decay": self.coupled_weight_decay,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner_optimizer = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        config["masks"] = _mask_argument.from_config(
            config.get("masks"), custom_objects
        )
        return cls(inner_optimizer, **config)


SpatialGradientScaling = SGSWrapper


def find_sgs_wrapper(optimizer):
    """Returns the `SGSWrapper` in `optimizer`, or `None`: the optimizer
    itself, or one it holds, as a `LossScaleOptimizer` (which Keras adds
    under `mixed_float16`) holds its `inner_optimizer` and a
    `keras.optimizers.MultiOptimizer` its `optimizers`. Raises a
    `ValueError` when it holds several (one callback refreshes one
    wrapper's masks)."""
    found, stack = [], [optimizer]
    while stack:
        optimizer = stack.pop()
        if isinstance(optimizer, SGSWrapper):
            found.append(optimizer)
        elif optimizer is not None:
            stack += getattr(optimizer, "optimizers", None) or []
            stack.append(getattr(optimizer, "inner_optimizer", None))
    if len(found) > 1:
        raise ValueError(
            "The model's optimizer holds several SGSWrappers; "
            "MIScalingCallback and plot_masks read one. Wrap one "
            "sub-optimizer of the MultiOptimizer. Received: "
            f"{[w.name for w in found]}"
        )
    return found[0] if found else None


def scaled_conv_layers(model, wrapper):
    """`[(layer, kernel)]` for every conv layer whose kernel `wrapper` scales,
    in the order of `model`'s layers (nested models included)."""
    found = []
    for layer in private.flatten_layers(model):
        for kernel in spatial_kernels(layer):
            try:
                if wrapper.get_mask(kernel) is not None:
                    found.append((layer, kernel))
            except ValueError:  # a frozen conv: not among the variables
                pass
    return found

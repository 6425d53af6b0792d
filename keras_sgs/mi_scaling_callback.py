"""`MIScalingCallback`: learn each conv layer's SGS mask from data."""

import concurrent.futures
import gc
import itertools
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_sgs import _keras_private as private
from keras_sgs._arrays import to_numpy
from keras_sgs._checks import check_int
from keras_sgs._checks import check_number
from keras_sgs._cross_worker import mean_over_workers
from keras_sgs._held_out import check_inputs_fit_model
from keras_sgs._held_out import held_out_inputs
from keras_sgs._layer_inputs import compiled_capture
from keras_sgs.mutual_info import spatial_dependence
from keras_sgs.sgs_wrapper import find_sgs_wrapper
from keras_sgs.sgs_wrapper import scaled_conv_layers


class MIScalingCallback(keras.callbacks.Callback):
    """Recomputes every SGS mask from mutual information (the paper's SGS-MI).

    At the start of epoch `warmup`, and then every `every` epochs, the model
    runs in inference mode on a fixed batch of `data` (a few training
    images, e.g. with the evaluation preprocessing), the input of every
    conv layer whose kernel the model's `SGSWrapper` scales is captured,
    and the layer's mask becomes
    `dependence_to_scaling(spatial_dependence(input))` (see
    `spatial_dependence`). Before epoch `warmup` the masks keep their
    initial value (ones). Masks are only changed at epoch boundaries.

    The capture is one compiled forward pass (`tf.function` / `jax.jit`;
    eager on PyTorch) built at the first refresh and reused: for
    Functional and Sequential models a sub-model whose outputs are the
    layers' inputs; for subclassed and nested models and shared layers the
    layers' calls are recorded while the model runs (the first call of a
    layer counts; calls from other threads meanwhile are not recorded, and
    one recording runs at a time). A layer whose estimate is undefined
    keeps its previous mask and a warning says why; so does a layer that
    is built but never called in the forward pass (e.g. a branch that the
    model skips), whose input cannot be captured: training never stops
    because of the estimator. Messages name each layer by its kernel's
    variable path (`block1/conv1/kernel`), which stays unique where layer
    names repeat (nested blocks).

    `data` is read as `fit` reads a batch (see
    `keras.utils.unpack_x_y_sample_weight`): the inputs `x` of `x`, `(x,)`,
    `(x, y)` or `(x, y, sample_weight)`, a list counting as a tuple (a
    PyTorch `DataLoader` yields `[x, y]`), so labels are never taken for
    inputs. A model of several inputs takes them as a dict, or as
    `([x1, x2],)`. At the start of `fit` the inputs are checked against
    the model's (Functional and Sequential models, whose inputs are
    known), with an error saying what was received and what the model
    expects.

    Each epoch's `logs` (hence `History`) receive `sgs_refresh_seconds`
    (0 when the epoch had no refresh) and the smallest and largest mask
    entry over all layers, `sgs_mask_min` and `sgs_mask_max`.

    The layers are selected anew at the start of every `fit` (after a
    recompile, or unfreezing layers for fine-tuning, the same callback
    refreshes the newly trainable convs); a model whose variables do not
    exist yet (a subclassed model or a `Sequential` without `Input`, before
    its first step) is looked at again at its first refresh. A `fit` in
    which no conv kernel is scaled (e.g. a frozen base under a `Dense`
    head) warns once and refreshes nothing.

    The mask is defined around the kernel's centre pixel, so convs without
    one are left at their current mask (with one warning per `fit` naming
    them): kernels with an even size along a spatial axis (2x2, 4x4) and
    patchify convs, whose strides equal their kernel size (ConvNeXt's 4x4
    stride-4 stem, ViT-style patch embeddings), where neighbouring windows
    share no pixel. Name such a layer in `layers` to get an error instead.

    Example:

    ```python
    model.compile(
        optimizer=keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1, 0.9)),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(
        train_ds,
        epochs=30,
        callbacks=[keras_sgs.MIScalingCallback(x_train[:256], every=5)],
    )
    ```

    Args:
        data: the images to estimate from, in a form `fit` takes:
            arrays (`x`, a dict of arrays, or an `(x, y)` /
            `(x, y, sample_weight)` tuple or list), or a source of such
            batches (`tf.data.Dataset`, `keras.utils.PyDataset`,
            generator or iterator, PyTorch
            `DataLoader`) from which the first `num_batches` are taken
            once. Only the inputs are kept, at most the first
            `max_images`.
        every: int >= 1. Epochs between refreshes. Defaults to 1.
        warmup: int >= 0. The first epoch (0-based) that refreshes.
            Defaults to 1.
        k: float > 0. Sharpening of the MI estimate. Defaults to 5.
        diagonal_removal: bool. See `spatial_dependence`. Defaults to
            `False`.
        layers: `None` (every scaled conv layer) or a list of layers to
            refresh: layer names, kernel variable paths (unique where
            names repeat) or layer objects. Defaults to `None`.
        verbose: 0 or 1. With 1, prints a line per layer per refresh.
            Defaults to 0.
        num_batches: int >= 1. Batches taken from an iterable `data`.
            Defaults to 2 (the authors' setting).
        max_images: int >= 1. Inputs kept (the first ones), from
            arrays and iterables alike: one refresh runs the model on all of
            them at once. Defaults to 512 (the authors use 2 batches of 128
            on CIFAR, of 256 on ImageNet).
    """

    def __init__(
        self,
        data,
        every=1,
        warmup=1,
        k=5.0,
        diagonal_removal=False,
        layers=None,
        verbose=0,
        num_batches=2,
        max_images=512,
    ):
        super().__init__()
        self.every = check_int("every", every, minimum=1)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.k = check_number("k", k, minimum=0, exclusive=True)
        num_batches = check_int("num_batches", num_batches, minimum=1)
        max_images = check_int("max_images", max_images, minimum=1)
        if layers is not None and (
            isinstance(layers, (str, keras.layers.Layer)) or not layers
        ):
            raise ValueError(
                "`layers` must be None or a non-empty list of layer names, "
                f"kernel paths or layers. Received: layers={layers!r}"
            )
        self.data = held_out_inputs(data, num_batches, max_images)
        self.diagonal_removal = bool(diagonal_removal)
        self.layers = layers
        self.verbose = verbose
        self._targets = None
        self._capture = None
        self._warned_uncalled = False
        self._epoch_logs = {}

    # -- schedule -----------------------------------------------------------

    def on_train_begin(self, logs=None):
        check_inputs_fit_model(self.data, self.model)
        # Select the layers again: the model may have been recompiled or
        # (un)frozen since the last `fit`.
        self._targets = None
        self._capture = None
        self._warned_uncalled = False
        self._wrapper_and_targets()
        _warn_if_after_tensorboard(self)

    def on_epoch_begin(self, epoch, logs=None):
        seconds = 0.0
        due = epoch >= self.warmup and (epoch - self.warmup) % self.every == 0
        if due and self._wrapper_and_targets()[1] != []:
            start = time.perf_counter()
            self.refresh()
            seconds = time.perf_counter() - start
        self._epoch_logs = {"sgs_refresh_seconds": seconds}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self._epoch_logs)
        wrapper, targets = self._wrapper_and_targets()
        if not targets:
            return
        masks = [to_numpy(wrapper.get_mask(kernel)) for _, kernel in targets]
        logs["sgs_mask_min"] = float(min(m.min() for m in masks))
        logs["sgs_mask_max"] = float(max(m.max() for m in masks))

    # -- one refresh --------------------------------------------------------

    def refresh(self):
        """Recomputes and assigns every target layer's mask now.

        Returns:
            A dict `{kernel variable path: new mask as a numpy array}` of
            the layers whose mask changed.
        """
        wrapper, targets = self._wrapper_and_targets()
        if targets is None:
            warnings.warn(
                "MIScalingCallback: the model has no variables yet (it is "
                "built by its first training step), so this refresh is "
                "skipped; the masks stay as they are. Use warmup >= 1.",
                stacklevel=2,
            )
            return {}
        if not targets:
            return {}
        if self._capture is None:
            layers = [layer for layer, _ in targets]
            self._capture = compiled_capture(self.model, layers)
        targets, feature_maps = self._called(targets, self._capture(self.data))
        layers = [layer for layer, _ in targets]
        if keras.backend.backend() == "torch":
            # Eager, nothing to compile; and PyTorch's ops ran 3x slower in
            # a worker thread than in this one (ConvNeXtTiny's refresh).
            estimates = list(map(self._estimate, layers, feature_maps))
        else:
            # Two layers at a time: the estimator's compilations (a handful
            # of shapes on the first refresh) and its serial steps overlap.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                estimates = list(pool.map(self._estimate, layers, feature_maps))
        estimates = mean_over_workers(self.model, estimates)
        updated = {}
        for (layer, kernel), mask, fmap in zip(
            targets, estimates, feature_maps
        ):
            if not np.all(np.isfinite(mask)):
                reason = _why_undefined(layer, fmap, self.diagonal_removal)
                warnings.warn(
                    "MIScalingCallback: the estimate for the layer of "
                    f"kernel '{kernel.path}' is undefined ({reason}); the "
                    "layer keeps its previous mask.",
                    stacklevel=2,
                )
                continue
            wrapper.set_mask(kernel, mask)
            updated[kernel.path] = mask
            if self.verbose:
                private.print_msg(
                    f"SGS mask {kernel.path}: "
                    + np.array2string(mask, precision=3, separator=", ")
                )
        return updated

    def _called(self, targets, feature_maps):
        """`(targets, feature_maps)` of the layers that the forward pass
        called (the others have no captured input); warns once per `fit`
        about the others, which keep their masks."""
        uncalled = [
            k.path for (_, k), f in zip(targets, feature_maps) if f is None
        ]
        if uncalled and not self._warned_uncalled:
            self._warned_uncalled = True
            warnings.warn(
                "MIScalingCallback leaves the layers of kernels "
                f"{uncalled} at their current masks: the model's forward "
                "pass (`model(x)`) does not call them, so their input "
                "cannot be captured. They may still train, e.g. through a "
                "custom `compute_loss` (a distiller's teacher), with those "
                "masks.",
                stacklevel=3,
            )
        called = [
            (t, f) for t, f in zip(targets, feature_maps) if f is not None
        ]
        return [t for t, _ in called], [f for _, f in called]

    def _wrapper_and_targets(self):
        model = self.model  # on JAX this syncs the training state back
        wrapper = find_sgs_wrapper(model.optimizer)
        if wrapper is None:
            raise ValueError(
                "MIScalingCallback needs the model to be compiled with a "
                "keras_sgs.SGSWrapper optimizer. Received: optimizer="
                f"{model.optimizer!r}"
            )
        parts_built = all(
            layer.built
            for layer in private.flatten_layers(model, recursive=False)
        )
        if not model.variables or not (model.built or parts_built):
            # A subclassed model or an Input-less Sequential before its
            # first step: nothing to select yet (and the optimizer must not
            # be built on no variables). A model of built parts is ready:
            # on TensorFlow a subclassed one (keras.io's Distiller) is not
            # `built` before its first step, though all its variables are.
            return wrapper, None
        if not model.optimizer.built:
            # On TensorFlow without a strategy, fit() builds the optimizer
            # only inside the first traced step. Build the outermost one
            # (e.g. the LossScaleOptimizer), which builds the wrapper.
            model.optimizer.build(model.trainable_variables)
        if self._targets is None:
            self._targets = self._select_targets(model, wrapper)
        return wrapper, self._targets

    def _select_targets(self, model, wrapper):
        scaled = scaled_conv_layers(model, wrapper)
        if self.layers is None:
            centred = [(lyr, k) for lyr, k in scaled if not _no_centre(lyr)]
            skipped = [k.path for lyr, k in scaled if _no_centre(lyr)]
            if skipped:
                warnings.warn(
                    "MIScalingCallback leaves the layers of kernels "
                    f"{skipped} at their current masks: their kernels have "
                    "no centre pixel to define the mask around (an even "
                    "kernel size, or strides equal to the kernel size).",
                    stacklevel=3,
                )
            if not centred:
                warnings.warn(
                    "MIScalingCallback has no layer to refresh in this fit: "
                    "no trainable conv layer of the model has its kernel "
                    "scaled by the SGSWrapper (kernels with more than one "
                    "spatial position, around a centre pixel).",
                    stacklevel=3,
                )
            return centred
        # A layer is named by its name or kernel path, or given as the
        # object itself.
        wanted = {_layer_key(item) for item in self.layers}
        targets = [
            (layer, kernel)
            for layer, kernel in scaled
            if wanted & {layer.name, kernel.path, id(layer)}
        ]
        found = set()
        for layer, kernel in targets:
            found |= {layer.name, kernel.path, id(layer)}
        missing = [
            getattr(item, "name", item)
            for item in self.layers
            if _layer_key(item) not in found
        ]
        if missing:
            raise ValueError(
                "`layers` names layers that are not conv layers scaled by "
                f"the model's SGSWrapper. Received: {missing}; scaled "
                f"layers (kernel paths): {[k.path for _, k in scaled]}"
            )
        uncentred = [k.path for layer, k in targets if _no_centre(layer)]
        if uncentred:
            raise ValueError(
                "`layers` names layers whose kernels have no centre pixel "
                "(an even kernel size, or strides equal to the kernel "
                f"size), around which the mask is defined. Received: "
                f"{uncentred}"
            )
        return targets

    def _estimate(self, layer, fmap):
        fmap = _channels_last(layer, fmap)
        padding = (
            layer.padding if layer.padding in ("same", "causal") else "valid"
        )
        dependence = spatial_dependence(
            fmap,
            layer.kernel_size,
            k=self.k,
            padding=padding,
            dilation_rate=layer.dilation_rate,
            diagonal_removal=self.diagonal_removal,
        )
        # `dependence_to_scaling` in numpy: on JAX an eager op compiles
        # once per kernel shape.
        dependence = to_numpy(dependence)
        return dependence / dependence.mean()


def _channels_last(layer, fmap):
    """A layer's input map with the channels last, as the estimator reads
    it."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return ops.moveaxis(fmap, 1, -1)
    return fmap


def _layer_key(item):
    return item if isinstance(item, str) else id(item)


def _why_undefined(layer, fmap, diagonal_removal):
    """Why no channel of a layer's input gives an estimate, in words."""
    x = to_numpy(_channels_last(layer, fmap))
    x = x.reshape(-1, x.shape[-1]).astype("float64")
    finite = np.isfinite(x)
    non_finite = int(np.sum(~finite.all(axis=0)))
    x = np.where(finite, x, 0.0)
    constant = int(np.sum(finite.all(axis=0) & (np.ptp(x, axis=0) == 0)))
    reasons = []
    if non_finite:
        reasons.append(
            f"{non_finite} of {x.shape[1]} input channels hold NaN or inf"
        )
    if constant:
        reasons.append(
            f"{constant} of {x.shape[1]} input channels are constant"
        )
    if diagonal_removal and not reasons:
        reasons.append("diagonal removal leaves no pair of non-zero values")
    return "; ".join(reasons) or "no channel gives an estimate"


def _warn_if_after_tensorboard(callback):
    """Warns when a `keras.callbacks.TensorBoard` comes before `callback`
    in the `fit` that runs it: Keras calls `on_epoch_end` in list order,
    so that TensorBoard writes each epoch's logs before `callback` has
    added its `sgs_*` values. Keras gives a callback no handle on its
    list, so the list is found among the objects the garbage collector
    tracks (as `conv_kernels` finds conv layers)."""
    for obj in gc.get_objects():
        if not issubclass(type(obj), keras.callbacks.CallbackList):
            continue
        callbacks = getattr(obj, "callbacks", [])
        if not any(c is callback for c in callbacks):
            continue
        before = itertools.takewhile(lambda c: c is not callback, callbacks)
        if any(isinstance(c, keras.callbacks.TensorBoard) for c in before):
            warnings.warn(
                "MIScalingCallback comes after a TensorBoard callback in "
                "`callbacks`: TensorBoard will not log its sgs_* scalars "
                "(it writes each epoch's logs before this callback adds "
                "them). List MIScalingCallback first.",
                stacklevel=3,
            )
            return


def _no_centre(layer):
    """Whether a conv layer's kernel has no centre pixel: an even size
    along a spatial axis, or (patchify) strides equal to its size."""
    size = tuple(layer.kernel_size)
    return any(k % 2 == 0 for k in size) or tuple(layer.strides) == size

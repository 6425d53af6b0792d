"""Structural reparameterization: branched conv blocks and their fusion.

ACNet's `ACBlock` (kxk + 1xk + kx1) and RepVGG's `RepVGGBlock` (kxk + 1x1
+ identity) train a convolution as parallel branches, each followed by its
own `BatchNormalization`, and sum them. In inference mode every branch is
linear, so the block equals one kxk convolution with a bias: fold each
branch's BN into its kernel, zero-pad the kernel into the centre of the kxk
window, and sum (`fuse()`, `fuse_model()`). These blocks are the branched
baselines SGS is compared with (`docs/guide.md`, "The method").

All branches see the same padding, so the fusion is exact for any stride
and input size: `padding="valid"` crops the smaller branches' inputs to
the centre of the kxk window, and `padding="same"` (stride 1 only, where
Keras pads symmetrically) pads every branch by half its size. For a strided
"same" block, pad the input with `ZeroPadding2D((k - 1) // 2)` and use
`padding="valid"`: Keras' stride-2 "same" pads a 3x3 conv by (0, 1) rows
on an even input but a 1x3 conv by (0, 0), so such branches would not
align. The blocks are channels-last.

The math is in small numpy functions: `fold_batch_norm`, `pad_kernel`,
`identity_kernel`.
"""

import functools

import keras
import numpy as np
from keras import ops

from keras_sgs._arrays import to_numpy
from keras_sgs._checks import check_int

PADDINGS = ("valid", "same")


def fold_batch_norm(kernel, gamma, beta, moving_mean, moving_variance, epsilon):
    """Folds an inference-mode BatchNormalization into the conv before it.

    `BN(conv(x, kernel))` equals `conv(x, folded_kernel) + bias` with

    ```python
    scale = gamma / sqrt(moving_variance + epsilon)
    folded_kernel = kernel * scale  # per output channel
    bias = beta - moving_mean * scale
    ```

    Example:

    ```python
    kernel, bias = fold_batch_norm(
        kernel, *[keras.ops.convert_to_numpy(w) for w in bn.weights],
        bn.epsilon,
    )
    ```

    Args:
        kernel: numpy array of shape `(kh, kw, in, out)`.
        gamma, beta, moving_mean, moving_variance: numpy arrays of shape
            `(out,)`, the BatchNormalization's weights.
        epsilon: float. The BatchNormalization's `epsilon`.

    Returns:
        A tuple `(folded_kernel, bias)` of numpy arrays, shapes
        `kernel.shape` and `(out,)`.
    """
    scale = gamma / np.sqrt(moving_variance + epsilon)
    return kernel * scale, beta - moving_mean * scale


def pad_kernel(kernel, kernel_size):
    """Zero-pads a small conv kernel into the centre of a larger window.

    Example:

    ```python
    pad_kernel(np.ones((1, 3, 8, 16)), 3)[..., 0, 0]
    # [[0, 0, 0],
    #  [1, 1, 1],
    #  [0, 0, 0]]
    ```

    Args:
        kernel: numpy array of shape `(kh, kw, in, out)`.
        kernel_size: int. The size `k` of the square window; `k - kh` and
            `k - kw` must be even and non-negative.

    Returns:
        A numpy array of shape `(k, k, in, out)`.
    """
    margins = [kernel_size - size for size in kernel.shape[:2]]
    if any(m < 0 or m % 2 for m in margins):
        raise ValueError(
            f"A kernel of spatial size {kernel.shape[:2]} cannot be centred "
            f"in a {kernel_size}x{kernel_size} window: it must fit and leave "
            "an even margin. Received: kernel with shape "
            f"{kernel.shape}, kernel_size={kernel_size}"
        )
    pads = [(m // 2, m // 2) for m in margins] + [(0, 0), (0, 0)]
    return np.pad(kernel, pads)


def identity_kernel(channels, dtype="float32"):
    """The `(1, 1, channels, channels)` kernel of the identity map."""
    return np.eye(channels, dtype=dtype).reshape(1, 1, channels, channels)


def _batch_norm_arrays(batch_norm):
    """`(gamma, beta, moving_mean, moving_variance, epsilon)` of a BN layer
    in float64."""
    arrays = [
        to_numpy(v).astype(np.float64)
        for v in (
            batch_norm.gamma,
            batch_norm.beta,
            batch_norm.moving_mean,
            batch_norm.moving_variance,
        )
    ]
    return (*arrays, batch_norm.epsilon)


class _BranchedConv(keras.layers.Layer):
    """Parallel conv-BN branches, summed.

    Subclasses return the branch kernel sizes from `_branch_kernel_sizes()`
    (the first one `(k, k)`) and may add an identity-BN branch by
    overriding `_has_identity()`.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="valid",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        momentum=0.99,
        epsilon=1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        filters = check_int("filters", filters, minimum=1)
        kernel_size = check_int("kernel_size", kernel_size, minimum=1, odd=True)
        strides = check_int("strides", strides, minimum=1)
        if padding not in PADDINGS:
            raise ValueError(
                f"`padding` must be one of {PADDINGS}. Received: "
                f"padding={padding!r}"
            )
        if padding == "same" and strides != 1:
            raise ValueError(
                "`padding='same'` needs `strides=1`: Keras pads strided "
                "'same' convs asymmetrically and differently per branch "
                "size. Pad the input with ZeroPadding2D((kernel_size - 1) "
                "// 2) and use padding='valid'. Received: "
                f"padding={padding!r}, strides={strides}"
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.momentum = momentum
        self.epsilon = epsilon
        self.convs = [
            keras.layers.Conv2D(
                self.filters,
                size,
                strides=self.strides,
                padding=self.padding,
                data_format="channels_last",
                use_bias=False,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer,
                dtype=self.dtype_policy,
                name=f"conv_{size[0]}x{size[1]}",
            )
            for size in self._branch_kernel_sizes()
        ]
        self.batch_norms = [
            self._batch_norm(f"bn_{conv.kernel_size[0]}x{conv.kernel_size[1]}")
            for conv in self.convs
        ]
        self.identity_batch_norm = None

    def _branch_kernel_sizes(self):
        raise NotImplementedError

    def _has_identity(self, channels):
        return False

    def _batch_norm(self, name):
        return keras.layers.BatchNormalization(
            momentum=self.momentum,
            epsilon=self.epsilon,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for conv, batch_norm in zip(self.convs, self.batch_norms):
            conv.build(self._cropped_shape(input_shape, conv.kernel_size))
            batch_norm.build(self.compute_output_shape(input_shape))
        if self._has_identity(input_shape[-1]):
            self.identity_batch_norm = self._batch_norm("bn_identity")
            self.identity_batch_norm.build(input_shape)

    def _margins(self, size):
        if self.padding == "same":
            return (0, 0)
        return tuple((self.kernel_size - s) // 2 for s in size)

    def _cropped_shape(self, shape, size):
        dims = list(shape)
        for axis, margin in zip((1, 2), self._margins(size)):
            if dims[axis] is not None:
                dims[axis] -= 2 * margin
        return tuple(dims)

    def _crop(self, x, size):
        """With "valid" padding, a branch smaller than the kxk window sees
        only the input under the window's centre rows / columns."""
        top, left = self._margins(size)
        if top == left == 0:
            return x
        return x[:, top : -top or None, left : -left or None, :]

    def call(self, inputs, training=None):
        outputs = [
            batch_norm(
                conv(self._crop(inputs, conv.kernel_size)), training=training
            )
            for conv, batch_norm in zip(self.convs, self.batch_norms)
        ]
        if self.identity_batch_norm is not None:
            identity = self._crop(inputs, (1, 1))
            outputs.append(
                self.identity_batch_norm(identity, training=training)
            )
        return functools.reduce(ops.add, outputs)

    def compute_output_shape(self, input_shape):
        return self.convs[0].compute_output_shape(input_shape)

    def fuse(self):
        """Returns the single conv equivalent to the block in inference.

        Each branch's BatchNormalization is folded with its moving
        statistics, the branch kernels are zero-padded into the centre of
        the `kernel_size` window and summed. A
        `keras.layers.Conv2D(filters, kernel_size, strides=strides,
        padding=padding, use_bias=True)` with these weights computes what
        the block computes with `training=False`.

        Returns:
            A tuple `(kernel, bias)` of numpy arrays of the layer's
            variable dtype, shapes `(k, k, in, filters)` and `(filters,)`.
        """
        if not self.built:
            raise ValueError(
                f"Layer '{self.name}' must be built before it can be fused. "
                "Call it on an input first."
            )
        branches = [
            (to_numpy(conv.kernel), batch_norm)
            for conv, batch_norm in zip(self.convs, self.batch_norms)
        ]
        if self.identity_batch_norm is not None:
            branches.append(
                (identity_kernel(self.filters), self.identity_batch_norm)
            )
        kernel, bias = 0.0, 0.0
        for branch_kernel, batch_norm in branches:
            folded, branch_bias = fold_batch_norm(
                branch_kernel.astype(np.float64),
                *_batch_norm_arrays(batch_norm),
            )
            kernel = kernel + pad_kernel(folded, self.kernel_size)
            bias = bias + branch_bias
        dtype = self.convs[0].kernel.dtype
        return kernel.astype(dtype), bias.astype(dtype)

    def fused_conv(self):
        """An unbuilt `Conv2D` with bias that `fuse()`'s weights fit, with
        this block's name, strides and padding."""
        return keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name=self.name,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "momentum": self.momentum,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_sgs")
class ACBlock(_BranchedConv):
    """ACNet's asymmetric convolution block: kxk + 1xk + kx1 conv-BN, summed.

    Three parallel convolutions without bias (`kernel_size` square, one row,
    one column), each followed by its own `BatchNormalization`; the block
    returns their sum, with no activation (Ding et al., "ACNet", ICCV
    2019). After training, `fuse()` gives the one kxk conv with bias that
    computes the same in inference mode, and `fuse_model()` swaps every
    block of a model for it.

    Example:

    ```python
    inputs = keras.Input((32, 32, 3))
    x = keras_sgs.reparam.ACBlock(64, padding="same")(inputs)
    # A strided block: pad explicitly, then "valid".
    x = keras.layers.ZeroPadding2D(1)(keras.layers.ReLU()(x))
    x = keras_sgs.reparam.ACBlock(128, strides=2)(x)
    ```

    Args:
        filters: int. Output channels.
        kernel_size: odd int. The size `k` of the square branch.
            Defaults to 3.
        strides: int. Stride of every branch. Defaults to 1.
        padding: `"valid"` or `"same"`. With `"same"` (needs `strides=1`)
            the output has the input's size. Defaults to `"valid"`.
        kernel_initializer: initializer of the branch kernels.
        kernel_regularizer: optional regularizer of the branch kernels.
        momentum: float. Momentum of the BatchNormalization moving
            statistics. Defaults to 0.99.
        epsilon: float. Epsilon of the BatchNormalizations.
            Defaults to 1e-3.
        **kwargs: base layer keyword arguments, e.g. `name`, `dtype`.
    """

    def _branch_kernel_sizes(self):
        k = self.kernel_size
        return [(k, k), (1, k), (k, 1)]


@keras.saving.register_keras_serializable(package="keras_sgs")
class RepVGGBlock(_BranchedConv):
    """RepVGG's block: kxk conv-BN + 1x1 conv-BN + identity BN, summed.

    The identity branch (a `BatchNormalization` of the input) exists only
    when `strides == 1` and the input has `filters` channels. The block
    returns the sum of the branches, with no activation (Ding et al.,
    "RepVGG", CVPR 2021); `fuse()` gives the equivalent kxk conv with bias.

    Example:

    ```python
    block = keras_sgs.reparam.RepVGGBlock(64, padding="same")
    inputs = keras.Input((32, 32, 64))
    x = keras.layers.ReLU()(block(inputs))
    ...  # train
    kernel, bias = block.fuse()
    ```

    Args:
        filters: int. Output channels.
        kernel_size: odd int. The size `k` of the square branch.
            Defaults to 3.
        strides: int. Stride of every branch. Defaults to 1.
        padding: `"valid"` or `"same"`. With `"same"` (needs `strides=1`)
            the output has the input's size. Defaults to `"valid"`.
        kernel_initializer: initializer of the branch kernels.
        kernel_regularizer: optional regularizer of the branch kernels.
        momentum: float. Momentum of the BatchNormalization moving
            statistics. Defaults to 0.99.
        epsilon: float. Epsilon of the BatchNormalizations.
            Defaults to 1e-3.
        **kwargs: base layer keyword arguments, e.g. `name`, `dtype`.
    """

    def _branch_kernel_sizes(self):
        k = self.kernel_size
        return [(k, k), (1, 1)]

    def _has_identity(self, channels):
        return self.strides == 1 and channels == self.filters


BRANCHED_CONVS = (ACBlock, RepVGGBlock)


def fuse_model(model):
    """Returns a copy of `model` with every branched block fused into a conv.

    Every `ACBlock` / `RepVGGBlock` becomes the `Conv2D` with bias of its
    `fuse()` (same name, strides and padding); every other layer is cloned
    with its weights copied. In inference mode the copy computes what
    `model` computes, with one conv per block.

    Example:

    ```python
    model = keras_sgs.models.build_model("vgg11", 10, conv_type="acb")
    model.fit(...)
    deployed = keras_sgs.reparam.fuse_model(model)
    ```

    Args:
        model: a built Functional or Sequential model (nested ones
            included).

    Returns:
        A new model of the same kind.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a Keras model. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built before it can be fused. Received: an "
            f"unbuilt model '{model.name}'"
        )
    clones = []

    def clone(layer):
        if isinstance(layer, BRANCHED_CONVS):
            new = layer.fused_conv()
        else:
            new = layer.__class__.from_config(layer.get_config())
        clones.append((layer, new))
        return new

    fused = keras.models.clone_model(
        model, clone_function=clone, recursive=True
    )
    for layer, new in clones:
        if isinstance(layer, BRANCHED_CONVS):
            new.set_weights(layer.fuse())
        else:
            new.set_weights(layer.get_weights())
    return fused

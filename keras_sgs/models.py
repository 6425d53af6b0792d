"""The paper's models (CIFAR VGG and ResNet, ImageNet ResNet) in Keras.

`build_model(name, num_classes, conv_type=...)` builds each with plain
conv-BN layers, or with every spatial conv trained as an `ACBlock` or a
`RepVGGBlock` (the branched baselines, see `keras_sgs.reparam`).

Conventions, as the authors' PyTorch models: convs have no bias (each is
followed by BatchNormalization), conv kernels are He-normal with fan-out,
BatchNormalization uses PyTorch's momentum (0.1, Keras 0.9) and epsilon
(1e-5). Strided convs pad symmetrically by `(k - 1) // 2`, as PyTorch
does, with `ZeroPadding2D` and "valid" convs (Keras' "same" would pad a
stride-2 conv on an even input by (0, 1)); stride-1 convs use "same".
"""

import keras

from keras_sgs._checks import check_int
from keras_sgs._checks import check_number
from keras_sgs.reparam import ACBlock
from keras_sgs.reparam import RepVGGBlock

CONV_TYPES = ("plain", "acb", "repvgg")
HEADS = ("linear", "mlp")

_VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ],
}  # fmt: skip
# name: (block kind, blocks per stage, ImageNet stem)
_RESNET_CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), False),
    "imagenet_resnet18": ("basic", (2, 2, 2, 2), True),
    "imagenet_resnet50": ("bottleneck", (3, 4, 6, 3), True),
}
MODEL_NAMES = tuple(_VGG_CONFIGS) + tuple(_RESNET_CONFIGS)

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
_BOTTLENECK_EXPANSION = 4


def build_model(
    name,
    num_classes,
    conv_type="plain",
    input_shape=None,
    width=1.0,
    head="linear",
):
    """Builds one of the paper's models as a Functional model.

    - `"vgg11"`, `"vgg16"`: CIFAR VGG with BatchNormalization (conv widths
      `[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]` for VGG-11),
      then `Flatten` and the classifier `head`: one `Dense` layer
      (`"linear"`), or `"mlp"`, the three-layer classifier of the VGGs of
      `weiaicunzai/pytorch-cifar100` (the authors' CIFAR-100 models):
      `Dense(4096)`, ReLU, `Dropout(0.5)`, `Dense(4096)`, ReLU,
      `Dense(num_classes)`, initialized as PyTorch's `nn.Linear` (weights
      and biases uniform in `+-1/sqrt(fan_in)`).
    - `"resnet18"`: CIFAR ResNet-18, a 3x3 stem without max-pooling, basic
      blocks `[2, 2, 2, 2]` of widths 64 to 512.
    - `"imagenet_resnet18"`, `"imagenet_resnet50"`: the standard ImageNet
      ResNets (7x7 stride-2 stem, 3x3 stride-2 max-pooling, basic or
      bottleneck blocks, stride in the 3x3 conv as in torchvision).

    With `conv_type="acb"` every conv with a kernel larger than 1x1 (the
    7x7 stem included) is an `ACBlock`; with `"repvgg"` every 3x3 conv is a
    `RepVGGBlock`. Both replace the conv and its BatchNormalization, and
    `keras_sgs.reparam.fuse_model()` turns the model back into the plain
    one (with conv biases) after training.

    Example:

    ```python
    model = keras_sgs.models.build_model("resnet18", 100)
    small = keras_sgs.models.build_model("vgg11", 10, "acb", width=0.25)
    wei = keras_sgs.models.build_model("vgg11", 100, head="mlp")
    ```

    Args:
        name: str. One of `MODEL_NAMES`.
        num_classes: int. Units of the classifier, which returns logits.
        conv_type: str. One of `"plain"` (Conv2D without bias + BN),
            `"acb"` or `"repvgg"`. Defaults to `"plain"`.
        input_shape: optional tuple `(height, width, channels)`. Defaults
            to `(32, 32, 3)` for the CIFAR models and `(224, 224, 3)` for
            the ImageNet ones.
        width: float. Multiplies every conv's channel count and the
            hidden units of the `"mlp"` head (rounded, at least 1), e.g.
            0.25 for quick CPU tests. Defaults to 1.0.
        head: str. The VGGs' classifier, `"linear"` or `"mlp"` (see
            above); the ResNets' is always `"linear"` (global average
            pooling and one `Dense`). Defaults to `"linear"`.

    Returns:
        A `keras.Model` named `name`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(
            f"`name` must be one of {MODEL_NAMES}. Received: name={name!r}"
        )
    if conv_type not in CONV_TYPES:
        raise ValueError(
            f"`conv_type` must be one of {CONV_TYPES}. Received: "
            f"conv_type={conv_type!r}"
        )
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if head not in HEADS or (head != "linear" and name not in _VGG_CONFIGS):
        choices = HEADS if name in _VGG_CONFIGS else ("linear",)
        raise ValueError(
            f"`head` must be one of {choices} for {name!r}. Received: "
            f"head={head!r}"
        )
    width = check_number("width", width, minimum=0, exclusive=True)
    if input_shape is None:
        imagenet = name.startswith("imagenet_")
        input_shape = (224, 224, 3) if imagenet else (32, 32, 3)
    inputs = keras.Input(input_shape)

    def channels(count):
        return max(1, round(count * width))

    if name in _VGG_CONFIGS:
        x = _vgg_features(inputs, _VGG_CONFIGS[name], channels, conv_type)
        x = keras.layers.Flatten(name="flatten")(x)
        if head == "mlp":
            x = _mlp_head(x, channels(4096))
    else:
        kind, stages, imagenet_stem = _RESNET_CONFIGS[name]
        x = _resnet_features(
            inputs, kind, stages, imagenet_stem, channels, conv_type
        )
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if head == "mlp":
        dense = _torch_linear(num_classes, x.shape[-1], name="predictions")
        outputs = dense(x)
    else:
        outputs = keras.layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _torch_linear(units, fan_in, name):
    """A `Dense` layer initialized as PyTorch's `nn.Linear`: weights and
    biases uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`."""
    bound = fan_in**-0.5
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(
            1 / 3, mode="fan_in", distribution="uniform"
        ),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name=name,
    )


def _mlp_head(x, hidden):
    """`Dense(hidden)`, ReLU, `Dropout(0.5)`, `Dense(hidden)`, ReLU: the
    VGG classifier of `weiaicunzai/pytorch-cifar100` before its last
    layer."""
    x = _torch_linear(hidden, x.shape[-1], name="fc1")(x)
    x = keras.layers.Dropout(0.5, name="fc1_dropout")(_relu(x, "fc1"))
    return _relu(_torch_linear(hidden, hidden, name="fc2")(x), "fc2")


def conv_bn(x, filters, kernel_size, strides=1, conv_type="plain", name=None):
    """A conv followed by BatchNormalization, or the branched block that
    replaces both; symmetric padding `(kernel_size - 1) // 2`.

    `conv_type="acb"` uses an `ACBlock` for kernels larger than 1x1,
    `"repvgg"` a `RepVGGBlock` for 3x3 kernels; other kernels stay plain.
    The conv or block is named `name + "_conv"`.
    """
    padding = "same"
    if strides != 1:
        if kernel_size > 1:
            x = keras.layers.ZeroPadding2D(
                (kernel_size - 1) // 2, name=f"{name}_pad"
            )(x)
        padding = "valid"
    initializer = keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )
    block = None
    if conv_type == "acb" and kernel_size > 1:
        block = ACBlock
    elif conv_type == "repvgg" and kernel_size == 3:
        block = RepVGGBlock
    if block is not None:
        return block(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_initializer=initializer,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            name=f"{name}_conv",
        )(x)
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer=initializer,
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn"
    )(x)


def _relu(x, name):
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _vgg_features(x, config, channels, conv_type):
    convs = pools = 0
    for item in config:
        if item == "M":
            pools += 1
            x = keras.layers.MaxPooling2D(name=f"pool{pools}")(x)
        else:
            convs += 1
            name = f"conv{convs}"
            x = _relu(conv_bn(x, channels(item), 3, 1, conv_type, name), name)
    return x


def _resnet_features(x, kind, stages, imagenet_stem, channels, conv_type):
    if imagenet_stem:
        x = _relu(conv_bn(x, channels(64), 7, 2, conv_type, "stem"), "stem")
        x = keras.layers.ZeroPadding2D(1, name="pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool")(x)
    else:
        x = _relu(conv_bn(x, channels(64), 3, 1, conv_type, "stem"), "stem")
    block = _basic_block if kind == "basic" else _bottleneck_block
    for stage, blocks in enumerate(stages):
        for i in range(blocks):
            strides = 2 if stage > 0 and i == 0 else 1
            name = f"stage{stage + 1}_block{i + 1}"
            x = block(x, channels(64 * 2**stage), strides, conv_type, name)
    return x


def _basic_block(x, filters, strides, conv_type, name):
    y = conv_bn(x, filters, 3, strides, conv_type, f"{name}_1")
    y = conv_bn(_relu(y, f"{name}_1"), filters, 3, 1, conv_type, f"{name}_2")
    return _residual(x, y, strides, conv_type, name)


def _bottleneck_block(x, filters, strides, conv_type, name):
    y = _relu(conv_bn(x, filters, 1, 1, conv_type, f"{name}_1"), f"{name}_1")
    y = conv_bn(y, filters, 3, strides, conv_type, f"{name}_2")
    y = conv_bn(
        _relu(y, f"{name}_2"),
        filters * _BOTTLENECK_EXPANSION,
        1,
        1,
        conv_type,
        f"{name}_3",
    )
    return _residual(x, y, strides, conv_type, name)


def _residual(x, y, strides, conv_type, name):
    """`relu(shortcut(x) + y)`; the shortcut is a 1x1 conv-BN when the
    shape changes."""
    if strides != 1 or x.shape[-1] != y.shape[-1]:
        x = conv_bn(x, y.shape[-1], 1, strides, conv_type, f"{name}_0")
    x = keras.layers.Add(name=f"{name}_add")([x, y])
    return _relu(x, f"{name}_out")

import keras
import numpy as np
import pytest

from keras_sgs import models
from keras_sgs.reparam import ACBlock
from keras_sgs.reparam import RepVGGBlock


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def layers_of(model, types):
    return [layer for layer in model.layers if isinstance(layer, types)]


# Trainable parameters of the PyTorch models (torchvision's resnet18 and
# resnet50, the CIFAR ResNet-18 and VGG-BN of the authors' code base) with
# 10 classes for CIFAR and 1000 for ImageNet. The CIFAR VGGs there give
# their convs a bias (redundant before BN): 2752 (VGG-11) and 4224 (VGG-16)
# more parameters than ours.
@pytest.mark.parametrize(
    "name, num_classes, expected",
    [
        ("vgg11", 10, 9_231_114 - 2752),
        ("vgg16", 10, 14_728_266 - 4224),
        ("resnet18", 10, 11_173_962),
        ("imagenet_resnet18", 1000, 11_689_512),
        ("imagenet_resnet50", 1000, 25_557_032),
    ],
)
def test_parameter_counts(name, num_classes, expected):
    assert trainable_count(models.build_model(name, num_classes)) == expected


def test_mlp_head_is_the_cifar100_vgg_classifier(cifar10_train):
    """`head="mlp"`: the VGG-11-BN of `weiaicunzai/pytorch-cifar100` with
    100 classes, 28,518,244 trainable parameters in PyTorch (its 2752 conv
    biases apart), Dense layers initialized as `nn.Linear`, dropout in
    training only."""
    model = models.build_model("vgg11", 100, head="mlp")
    assert trainable_count(model) == 28_518_244 - 2752
    units = [layer.units for layer in layers_of(model, keras.layers.Dense)]
    assert units == [4096, 4096, 100]
    for layer in layers_of(model, keras.layers.Dense):
        bound = layer.kernel.shape[0] ** -0.5
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias)
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        # Uniform in [-bound, bound]: standard deviation bound / sqrt(3).
        np.testing.assert_allclose(kernel.std(), bound / 3**0.5, rtol=0.02)
        assert bias.std() > bound / 3
    assert [layer.rate for layer in layers_of(model, keras.layers.Dropout)] == [
        0.5
    ]
    small = models.build_model("vgg11", 100, head="mlp", width=0.125)
    units = [layer.units for layer in layers_of(small, keras.layers.Dense)]
    assert units == [512, 512, 100]
    images = cifar10_train[0][:4]

    def logits(training):
        return keras.ops.convert_to_numpy(small(images, training=training))

    np.testing.assert_array_equal(logits(False), logits(False))
    assert not np.allclose(logits(True), logits(True))


def test_resnet50_matches_keras_applications():
    """Same layers and shapes as `keras.applications.ResNet50`, except that
    its convs have a bias (53 convs, 26560 parameters) and its stride-2
    blocks stride the first 1x1 conv (ResNet v1) where ours stride the 3x3
    conv (v1.5, as torchvision); that moves no parameter."""
    ours = models.build_model("imagenet_resnet50", 1000)
    reference = keras.applications.ResNet50(weights=None)
    reference_convs = layers_of(reference, keras.layers.Conv2D)
    biases = sum(layer.bias.shape[0] for layer in reference_convs)
    assert biases == 26_560
    assert ours.count_params() == reference.count_params() - biases
    assert len(layers_of(ours, keras.layers.Conv2D)) == len(reference_convs)
    assert ours.output_shape == reference.output_shape == (None, 1000)


@pytest.mark.parametrize(
    "name, input_shape, spatial_convs",
    [
        ("vgg11", (32, 32, 3), 8),
        ("vgg16", (32, 32, 3), 13),
        ("resnet18", (32, 32, 3), 17),
        ("imagenet_resnet18", (64, 64, 3), 17),
        ("imagenet_resnet50", (64, 64, 3), 17),
    ],
)
def test_conv_types(cifar10_train, name, input_shape, spatial_convs):
    images = np.resize(cifar10_train[0][:2], (2,) + input_shape)
    built = {
        conv_type: models.build_model(
            name, 7, conv_type, input_shape=input_shape, width=0.125
        )
        for conv_type in models.CONV_TYPES
    }
    plain_convs = layers_of(built["plain"], keras.layers.Conv2D)
    assert not layers_of(built["plain"], (ACBlock, RepVGGBlock))
    assert len(layers_of(built["acb"], ACBlock)) == spatial_convs
    # RepVGG blocks replace the 3x3 convs; a 7x7 stem stays plain.
    imagenet_stem = name.startswith("imagenet_")
    repvgg_blocks = layers_of(built["repvgg"], RepVGGBlock)
    assert len(repvgg_blocks) == spatial_convs - imagenet_stem
    assert all(block.kernel_size == 3 for block in repvgg_blocks)
    for conv_type, model in built.items():
        blocks = layers_of(model, (ACBlock, RepVGGBlock))
        convs = layers_of(model, keras.layers.Conv2D)
        assert len(blocks) + len(convs) == len(plain_convs), conv_type
        assert model(images, training=False).shape == (2, 7)


def test_widths_and_default_input_shapes():
    model = models.build_model("vgg11", 10, width=0.25)
    assert model.input_shape == (None, 32, 32, 3)
    widths = [layer.filters for layer in layers_of(model, keras.layers.Conv2D)]
    assert widths == [16, 32, 64, 64, 128, 128, 128, 128]
    resnet = models.build_model("imagenet_resnet50", 5, width=0.125)
    assert resnet.input_shape == (None, 224, 224, 3)
    assert resnet.get_layer("stage4_block3_3_conv").filters == 256
    assert resnet.output_shape == (None, 5)


def test_strided_convs_pad_symmetrically():
    model = models.build_model("imagenet_resnet18", 10, "acb", width=0.125)
    assert model.get_layer("stem_pad").padding == ((3, 3), (3, 3))
    stem = model.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides, stem.padding) == (7, 2, "valid")
    strided = model.get_layer("stage2_block1_1_conv")
    assert (strided.strides, strided.padding) == (2, "valid")
    assert model.get_layer("stage2_block1_1_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("stage2_block1_2_conv").padding == "same"
    # The 1x1 shortcut needs no padding.
    shortcut = model.get_layer("stage2_block1_0_conv")
    assert (shortcut.strides, shortcut.padding) == ((2, 2), "valid")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "vgg19"}, r"vgg11.*imagenet_resnet50.*name='vgg19'"),
        ({"conv_type": "dbb"}, r"plain.*acb.*repvgg.*conv_type='dbb'"),
        ({"num_classes": 0}, r"num_classes=0"),
        ({"width": 0}, r"width=0"),
        ({"width": "half"}, r"width='half'"),
        ({"head": "conv"}, r"\('linear', 'mlp'\) for 'vgg11'.*head='conv'"),
        (
            {"name": "resnet18", "head": "mlp"},
            r"\('linear',\) for 'resnet18'. Received: head='mlp'",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"name": "vgg11", "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        models.build_model(**arguments)

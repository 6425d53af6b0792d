import keras
import numpy as np
import pytest
from keras import ops

import keras_sgs
from keras_sgs import models
from keras_sgs import reparam
from keras_sgs.reparam import ACBlock
from keras_sgs.reparam import RepVGGBlock


def randomize_batch_norms(layer, seed=0):
    """Non-trivial gamma, beta and moving statistics in every BN of `layer`."""
    rng = np.random.default_rng(seed)
    for bn in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(bn, keras.layers.BatchNormalization):
            c = bn.gamma.shape[0]
            bn.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0.0, 0.2, c),
                    rng.normal(0.0, 0.2, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )


def relative_error(actual, expected):
    actual = ops.convert_to_numpy(actual)
    expected = ops.convert_to_numpy(expected)
    return np.abs(actual - expected).max() / np.abs(expected).max()


def built_block(block, images):
    block(images[:1])
    randomize_batch_norms(block)
    return block


def fused_conv_of(block, images):
    conv = block.fused_conv()
    conv.build(images.shape)
    conv.set_weights(block.fuse())
    return conv


# The numpy math.


def test_fold_batch_norm_matches_a_batch_norm_layer(cifar10_train):
    images = cifar10_train[0][:8]
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 4))
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    bn.build((None, 32, 32, 4))
    randomize_batch_norms(bn)
    folded, bias = reparam.fold_batch_norm(
        kernel, *[ops.convert_to_numpy(w) for w in bn.weights], bn.epsilon
    )
    conv = ops.conv(images, kernel.astype("float32"), padding="same")
    expected = bn(conv, training=False)
    actual = ops.conv(images, folded.astype("float32"), padding="same") + bias
    assert relative_error(actual, expected) < 1e-5


def test_fold_batch_norm_formula():
    kernel = np.ones((1, 1, 1, 2))
    folded, bias = reparam.fold_batch_norm(
        kernel,
        gamma=np.array([2.0, 1.0]),
        beta=np.array([0.5, 0.0]),
        moving_mean=np.array([1.0, 3.0]),
        moving_variance=np.array([4.0, 1.0]),
        epsilon=0.0,
    )
    np.testing.assert_allclose(folded.ravel(), [1.0, 1.0])
    np.testing.assert_allclose(bias, [0.5 - 1.0, -3.0])


def test_pad_kernel():
    row = np.arange(3.0).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(
        reparam.pad_kernel(row, 3)[..., 0, 0], [[0, 0, 0], [0, 1, 2], [0, 0, 0]]
    )
    column = reparam.pad_kernel(np.ones((5, 1, 2, 3)), 5)
    assert column.shape == (5, 5, 2, 3)
    np.testing.assert_array_equal(column[:, 2], 1.0)
    assert column.sum() == 5 * 2 * 3
    centre = reparam.pad_kernel(np.full((1, 1, 1, 1), 7.0), 3)[..., 0, 0]
    np.testing.assert_array_equal(centre, [[0, 0, 0], [0, 7, 0], [0, 0, 0]])


@pytest.mark.parametrize("shape", [(2, 2, 1, 1), (5, 5, 1, 1), (3, 2, 1, 1)])
def test_pad_kernel_rejects_kernels_that_do_not_centre(shape):
    with pytest.raises(ValueError, match=r"kernel_size=3"):
        reparam.pad_kernel(np.ones(shape), 3)


def test_identity_kernel(cifar10_train):
    images = cifar10_train[0][:2]
    kernel = reparam.identity_kernel(3)
    assert kernel.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ops.conv(images, kernel)), images
    )


# fuse() against a hand-written reference.


def reference_fusion(block, branch_sizes, identity):
    """Folds each branch's BN and pads its kernel into the window by hand."""
    k = block.kernel_size
    kernel = np.zeros((k, k) + tuple(block.convs[0].kernel.shape[2:]))
    bias = np.zeros(block.filters)
    kernels = [ops.convert_to_numpy(conv.kernel) for conv in block.convs]
    if identity:
        kernels.append(np.eye(block.filters).reshape(1, 1, *kernel.shape[2:]))
    bns = block.batch_norms + ([block.identity_batch_norm] if identity else [])
    for (h, w), small, bn in zip(branch_sizes, kernels, bns):
        gamma, beta, mean, var = [ops.convert_to_numpy(v) for v in bn.weights]
        scale = gamma / np.sqrt(var + bn.epsilon)
        top, left = (k - h) // 2, (k - w) // 2
        kernel[top : top + h, left : left + w] += small * scale
        bias += beta - mean * scale
    return kernel, bias


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_acblock_fuse_matches_reference(cifar10_train, kernel_size):
    block = built_block(ACBlock(6, kernel_size), cifar10_train[0])
    k = kernel_size
    kernel, bias = block.fuse()
    expected = reference_fusion(block, [(k, k), (1, k), (k, 1)], False)
    assert kernel.shape == (k, k, 3, 6) and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("filters, identity", [(3, True), (6, False)])
def test_repvgg_fuse_matches_reference(cifar10_train, filters, identity):
    block = built_block(RepVGGBlock(filters), cifar10_train[0])
    assert (block.identity_batch_norm is not None) == identity
    kernel, bias = block.fuse()
    expected = reference_fusion(block, [(3, 3), (1, 1), (1, 1)], identity)
    np.testing.assert_allclose(kernel, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected[1], rtol=1e-5, atol=1e-6)


def test_repvgg_has_no_identity_when_strided(cifar10_train):
    block = built_block(RepVGGBlock(3, strides=2), cifar10_train[0])
    assert block.identity_batch_norm is None


# The fused conv computes what the block computes, on real images.


@pytest.mark.parametrize("block_class", [ACBlock, RepVGGBlock])
@pytest.mark.parametrize(
    "strides, padding, size",
    [
        (1, "same", 32),
        (1, "same", 31),
        (1, "valid", 32),
        (2, "valid", 32),
        (2, "valid", 31),
        (3, "valid", 32),
    ],
)
def test_fused_conv_equals_block(
    cifar10_train, block_class, strides, padding, size
):
    images = cifar10_train[0][:16, :size, :size]
    if padding == "valid":  # a strided "same": symmetric explicit padding
        images = ops.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)])
    # 3 filters: RepVGG's identity branch when strides == 1.
    block = block_class(3, strides=strides, padding=padding)
    block = built_block(block, images)
    expected = block(images, training=False)
    actual = fused_conv_of(block, images)(images)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-5


def test_fused_acblock_with_kernel_5_and_odd_input(cifar10_train):
    images = cifar10_train[0][:8, :29, :30]
    block = built_block(ACBlock(4, kernel_size=5, strides=2), images)
    expected = block(images, training=False)
    assert expected.shape == (8, 13, 13, 4)
    assert relative_error(fused_conv_of(block, images)(images), expected) < 1e-5


# fuse_model on the models of keras_sgs.models.


def count_layers(model, types):
    layers = model._flatten_layers(include_self=False, recursive=True)
    return sum(isinstance(layer, types) for layer in layers)


@pytest.mark.parametrize("conv_type", ["acb", "repvgg"])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_fuse_model_equals_branched_model(cifar10_train, name, conv_type):
    images = cifar10_train[0][:8]
    model = models.build_model(
        name, 10, conv_type, input_shape=(32, 32, 3), width=0.125
    )
    randomize_batch_norms(model)
    fused = reparam.fuse_model(model)
    assert count_layers(fused, reparam.BRANCHED_CONVS) == 0
    assert [layer.name for layer in fused.layers[1:]] == [
        layer.name for layer in model.layers[1:]
    ]
    for layer, new in zip(model.layers, fused.layers):
        if isinstance(layer, reparam.BRANCHED_CONVS):
            assert type(new) is keras.layers.Conv2D and new.use_bias
    expected = model(images, training=False)
    assert relative_error(fused(images, training=False), expected) < 1e-4


def test_fuse_model_keeps_the_mlp_head(cifar10_train):
    images = cifar10_train[0][:8]
    model = models.build_model("vgg11", 100, "acb", width=0.125, head="mlp")
    randomize_batch_norms(model)
    fused = reparam.fuse_model(model)
    assert fused.get_layer("fc1_dropout").rate == 0.5
    expected = model(images, training=False)
    assert relative_error(fused(images, training=False), expected) < 1e-4


def test_fuse_model_after_training(cifar10_train):
    images, labels = cifar10_train
    model = models.build_model("vgg11", 10, "acb", width=0.125)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images[:128], labels[:128], batch_size=64, verbose=0)
    fused = reparam.fuse_model(model)
    expected = model(images[:32], training=False)
    actual = fused(images[:32], training=False)
    assert relative_error(actual, expected) < 1e-4


def test_fuse_model_nested_sequential(cifar10_train):
    images = cifar10_train[0][:8]
    inner = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            ACBlock(4, padding="same"),
            keras.layers.ReLU(),
        ]
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ZeroPadding2D(1)(inner(inputs))
    outputs = RepVGGBlock(4, strides=2)(x)
    model = keras.Model(inputs, outputs)
    randomize_batch_norms(model)
    fused = reparam.fuse_model(model)
    assert count_layers(fused, reparam.BRANCHED_CONVS) == 0
    assert isinstance(fused.layers[1], keras.Sequential)
    expected = model(images, training=False)
    assert relative_error(fused(images, training=False), expected) < 1e-5
    # The copy has its own weights.
    model.layers[1].set_weights([np.zeros_like(w) for w in inner.get_weights()])
    assert relative_error(fused(images, training=False), expected) < 1e-5


# Saving.


def test_config_round_trip():
    block = ACBlock(
        8,
        5,
        strides=2,
        kernel_regularizer="l2",
        momentum=0.9,
        epsilon=1e-5,
        name="acb",
    )
    clone = ACBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    assert clone.kernel_size == 5 and clone.convs[1].kernel_size == (1, 5)


def test_keras_file_round_trip(cifar10_train, tmp_path):
    images = cifar10_train[0][:8]
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ReLU()(ACBlock(3, padding="same")(inputs))
    x = keras.layers.ReLU()(RepVGGBlock(3, padding="same")(x))  # identity
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    randomize_batch_norms(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], ACBlock)
    assert loaded.layers[3].identity_batch_norm is not None
    expected = model(images, training=False)
    assert relative_error(loaded(images, training=False), expected) < 1e-6


# Arguments.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": 0}, r"filters=0"),
        ({"filters": 2.5}, r"filters=2.5"),
        ({"filters": 4, "kernel_size": 2}, r"kernel_size=2"),
        ({"filters": 4, "kernel_size": (3, 3)}, r"kernel_size=\(3, 3\)"),
        ({"filters": 4, "strides": 0}, r"strides=0"),
        ({"filters": 4, "padding": "causal"}, r"padding='causal'"),
        ({"filters": 4, "strides": 2, "padding": "same"}, r"strides=2"),
    ],
)
@pytest.mark.parametrize("block_class", [ACBlock, RepVGGBlock])
def test_bad_arguments(block_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        block_class(**kwargs)


def test_fuse_needs_a_built_block_and_fuse_model_a_model():
    with pytest.raises(ValueError, match="built"):
        ACBlock(4).fuse()
    with pytest.raises(ValueError, match="model="):
        reparam.fuse_model(ACBlock(4))


# The link with SGS (../docs/method.md, section 2).


def test_sgd_on_frozen_bn_branches_is_sgs_on_the_fused_kernel(cifar10_train):
    """With every branch BN frozen at scale 1 (gamma = 1, variance =
    1 - epsilon), one SGD step on the ACB branches moves the fused kernel as
    one `SGSWrapper` step with the ACB mask moves the fused conv."""
    images = cifar10_train[0][:16]
    block = ACBlock(4, padding="same")
    branched = keras.Sequential([keras.Input((32, 32, 3)), block])
    for bn in block.batch_norms:
        ones, zeros = np.ones(4), np.zeros(4)
        bn.set_weights([ones, zeros, zeros, ones - bn.epsilon])
        bn.trainable = False
    fused = reparam.fuse_model(branched)
    targets = ops.convert_to_numpy(branched(images, training=False)) * 0.5
    branched.compile(keras.optimizers.SGD(0.1), "mse")
    branched.train_on_batch(images, targets)
    mask = keras_sgs.mask_from_branches(
        (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
    )
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1), masks=mask)
    fused.compile(optimizer, "mse")
    fused.train_on_batch(images, targets)
    np.testing.assert_allclose(
        ops.convert_to_numpy(fused.layers[0].kernel),
        block.fuse()[0],
        rtol=1e-4,
        atol=1e-6,
    )

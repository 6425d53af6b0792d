"""The recipe's parts: augmentation layers, label checks, the optimizer
and the callback it builds."""

import keras
import numpy as np
import pytest
from conftest import CIFAR100_DIR

import keras_sgs
from keras_sgs import recipes
from keras_sgs.tfrecords import read_image_records

CIFAR100_TRAIN = str(CIFAR100_DIR / "train-00000-of-00008.tfrecord")


def test_random_crop_flip_is_a_shifted_crop_of_the_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 32, 32, 3)).astype(np.uint8)
    layer = recipes.RandomCropFlip(4, seed=1)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)]).astype(np.float32)
    seen = set()
    for i in range(len(images)):
        found = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if np.array_equal(
                out[i],
                padded[i, dy : dy + 32, dx : dx + 32][:, ::-1]
                if flip
                else padded[i, dy : dy + 32, dx : dx + 32],
            )
        ]
        assert len(found) == 1, i
        seen.add(found[0])
    # One draw per image: nearly all of the 162 (offset, flip) choices
    # occur, flips about half of the time.
    assert len(seen) > 140
    assert 0.35 < np.mean([flip for _, _, flip in seen]) < 0.65
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(images)), images.astype(np.float32)
    )


def test_cutout_zeroes_one_square_per_image():
    images = np.ones((400, 32, 32, 3), np.float32)
    layer = recipes.Cutout(16, seed=2)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    sides = []
    for image in out:
        zero = image[..., 0] == 0
        assert np.array_equal(zero[..., None].repeat(3, -1), image == 0)
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        # A rectangle: the product of its row and column ranges.
        assert zero.sum() == len(rows) * len(cols)
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        sides += [len(rows), len(cols)]
    assert min(sides) >= 8 and max(sides) == 16
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(images)), images
    )


def test_check_labels_refuses_labels_of_another_data_set():
    ten_classes = np.arange(2000) % 10
    with pytest.raises(ValueError, match="hold only 10 distinct labels"):
        recipes.check_labels(ten_classes, "cifar100", "records")
    # 512 draws from 100 classes show about 99 distinct labels (found with
    # accuracy.py --train_images=512 on CIFAR-10 records as CIFAR-100).
    with pytest.raises(
        ValueError, match="cifar100's 100 balanced classes show about 99"
    ):
        recipes.check_labels(ten_classes[:512], "cifar100", "records")
    # 10 images: about 10 labels expected, as many as CIFAR-10 has.
    recipes.check_labels(ten_classes[:10], "cifar100", "records")
    recipes.check_labels(ten_classes, "cifar10", "records")
    # The first images of the shuffled CIFAR-100 records pass at any size.
    _, real = read_image_records(CIFAR100_TRAIN, 512)
    for n in (1, 2, 16, 64, 256, 512):
        recipes.check_labels(real[:n], "cifar100", "records")
    with pytest.raises(ValueError, match=r"must be 0\.\.99 for cifar100"):
        recipes.check_labels(np.array([0, 100]), "cifar100", "records")
    with pytest.raises(ValueError, match="Received: labels from -1 to 3"):
        recipes.check_labels(np.array([-1, 3]), "cifar10", "records")


def test_methods_table_says_which_methods_branch_and_which_scale():
    branched = {m for m, s in recipes.METHODS.items() if s.branched}
    scaling = {m for m, s in recipes.METHODS.items() if s.scales_gradients}
    assert branched == {"acb", "repvgg"}
    assert scaling == {"sgs_mi", "sgs_constant"}
    for name, method in recipes.METHODS.items():
        model = keras_sgs.models.build_model(
            "vgg11", 10, conv_type=method.conv_type, width=0.125
        )
        has_branches = any(
            isinstance(layer, keras_sgs.reparam.BRANCHED_CONVS)
            for layer in model.layers
        )
        assert has_branches == method.branched, name


@pytest.mark.parametrize("method", list(recipes.METHODS))
def test_optimizer_is_the_recipes_sgd_with_the_methods_masks(method):
    """SGD momentum 0.9 without Nesterov, lr 0.1 decayed by a cosine over
    all steps to 0, coupled decay 5e-4; ACNet's mask for sgs_constant,
    ones otherwise."""
    optimizer = recipes.optimizer(method, total_steps=100)
    inner = optimizer.inner_optimizer
    assert isinstance(inner, keras.optimizers.SGD)
    assert (inner.momentum, inner.nesterov) == (0.9, False)
    assert optimizer.coupled_weight_decay == 5e-4
    schedule = keras.optimizers.schedules.deserialize(
        inner.get_config()["learning_rate"]
    )
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    np.testing.assert_allclose(
        [float(schedule(step)) for step in (0, 50, 100)],
        [0.1, 0.05, 0.0],
        atol=1e-7,
    )
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)]
    )
    optimizer.build(model.trainable_variables)
    mask = keras.ops.convert_to_numpy(
        optimizer.get_mask(model.layers[0].kernel)
    )
    acnet = [[1, 2, 1], [2, 3, 2], [1, 2, 1]]
    expected = acnet if method == "sgs_constant" else np.ones((3, 3))
    np.testing.assert_array_equal(mask[..., 0, 0], expected)


def test_optimizer_and_callback_follow_a_changed_recipe():
    recipe = recipes.Recipe(
        learning_rate=0.05,
        momentum=0.8,
        nesterov=True,
        weight_decay=0.0,
        refresh_every=3,
        refresh_warmup=2,
        mi_k=4.0,
    )
    optimizer = recipes.optimizer("baseline", 10, recipe)
    inner = optimizer.inner_optimizer
    assert (inner.momentum, inner.nesterov) == (0.8, True)
    assert float(inner.learning_rate) == pytest.approx(0.05)  # at step 0
    assert optimizer.coupled_weight_decay is None
    callback = recipes.mi_callback(np.zeros((4, 8, 8, 3), "float32"), recipe)
    assert isinstance(callback, keras_sgs.MIScalingCallback)
    assert (callback.every, callback.warmup, callback.k) == (3, 2, 4.0)


def test_augmentation_normalizes_always_and_augments_in_training():
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3))
    images = images.astype("uint8")
    layer = recipes.augmentation("cifar100", seed=3)
    stats = recipes.DATASETS["cifar100"]
    expected = (images / 255.0 - np.array(stats.mean)) / np.array(stats.std)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(images)), expected, atol=1e-5
    )
    trained = keras.ops.convert_to_numpy(layer(images, training=True))
    assert trained.dtype == np.float32 and trained.shape == images.shape
    # Cutout zeroes a square of every image; the crop moves most of them.
    assert all(np.sum(np.all(t == 0, axis=-1)) >= 64 for t in trained)
    assert np.mean(np.any(trained != expected, axis=(1, 2, 3))) == 1.0


@pytest.mark.parametrize(
    "changes, kept",
    [
        ({"cutout": None}, [recipes.RandomCropFlip]),
        ({"crop_padding": None}, [recipes.Cutout]),
        ({"crop_padding": None, "cutout": None}, []),
    ],
)
def test_augmentation_leaves_out_what_the_recipe_has_not(changes, kept):
    recipe = recipes.Recipe(**changes)
    layer = recipes.augmentation("cifar10", recipe, seed=0)
    augmenting = [
        type(sublayer)
        for sublayer in layer.layers
        if isinstance(sublayer, (recipes.RandomCropFlip, recipes.Cutout))
    ]
    assert augmenting == kept
    if not kept:
        images = np.full((2, 32, 32, 3), 128, "uint8")
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(layer(images, training=True)),
            keras.ops.convert_to_numpy(layer(images)),
        )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recipes.optimizer("dbb", 10), "method='dbb'"),
        (lambda: recipes.optimizer("baseline", 0), "total_steps=0"),
        (lambda: recipes.normalization("mnist"), "dataset='mnist'"),
        (lambda: recipes.RandomCropFlip(-1), "padding=-1"),
        (lambda: recipes.Cutout(True), "size=True"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()

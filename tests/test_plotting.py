import keras
import numpy as np
import pytest

import keras_sgs


def test_plot_masks_of_a_model(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(4, 5, name="c2")(x)
    model = keras.Model(inputs, x)
    model.compile(keras_sgs.SGSWrapper(keras.optimizers.SGD()), "mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.set_mask(model.get_layer("c2").kernel, np.full((5, 5), 2.0))
    masks = keras_sgs.plotting.model_masks(model)
    assert list(masks) == ["c1/kernel", "c2/kernel"]
    np.testing.assert_array_equal(masks["c2/kernel"], 2.0)
    path = keras_sgs.plot_masks(model, str(tmp_path / "masks.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_model_masks_of_blocks_with_repeated_layer_names():
    """Two blocks whose convs share a name (as KerasHub's do): each kernel
    keeps its own mask, keyed by its path as `refresh()` keys it."""

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")

        def build(self, input_shape):
            self.conv.build(input_shape)

        def call(self, x):
            return self.conv(x)

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, Block(name="b2")(Block(name="b1")(inputs)))
    model.compile(keras_sgs.SGSWrapper(keras.optimizers.SGD()), "mse")
    model.optimizer.build(model.trainable_variables)
    second = model.get_layer("b2").conv.kernel
    model.optimizer.set_mask(second, np.full((3, 3), 2.0))
    masks = keras_sgs.plotting.model_masks(model)
    assert list(masks) == ["b1/conv/kernel", "b2/conv/kernel"]
    np.testing.assert_array_equal(masks["b1/conv/kernel"], 1.0)
    np.testing.assert_array_equal(masks["b2/conv/kernel"], 2.0)


def test_plot_masks_of_a_dict_and_errors(tmp_path):
    path = str(tmp_path / "m.png")
    keras_sgs.plot_masks({"1d": np.ones(3), "3d": np.ones((3, 3, 3))}, path)
    with pytest.raises(ValueError, match="empty"):
        keras_sgs.plot_masks({}, path)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="SGSWrapper"):
        keras_sgs.plot_masks(model, path)


def test_plot_masks_shows_the_spatial_mean_of_channel_masks(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    model = keras.Model(inputs, x)
    per_channel = np.ones((3, 3, 1, 4)) * np.array([1.0, 2.0, 3.0, 6.0])
    full = np.random.default_rng(0).uniform(size=(3, 3, 4, 1))
    model.compile(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(), masks={"c1": per_channel, "dw": full}
        ),
        "mse",
    )
    model.optimizer.build(model.trainable_variables)
    masks = keras_sgs.plotting.model_masks(model)
    np.testing.assert_allclose(masks["c1/kernel"], np.full((3, 3), 3.0))
    np.testing.assert_allclose(
        masks["dw/kernel"], full.mean(axis=(2, 3)), rtol=1e-6
    )
    path = keras_sgs.plot_masks(model, str(tmp_path / "masks.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_masks_leaves_the_matplotlib_backend_as_it_found_it(tmp_path):
    """A notebook's backend (here "svg") is the user's: plotting draws on a
    Figure of its own and writes a PNG all the same."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        path = keras_sgs.plot_masks(
            {"c": np.ones((3, 3))}, str(tmp_path / "m.png")
        )
        assert matplotlib.get_backend() == "svg"
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)

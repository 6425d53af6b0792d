"""MIScalingCallback: masks equal the estimator applied to each conv layer's
real input, for every kind of model, on schedule, and robust to bad maps."""

import re
import warnings

import keras
import numpy as np
import pytest
from conftest import jax_only
from conftest import tensorflow_only

import keras_sgs

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def expected_mask(fmap, kernel_size=(3, 3), **kwargs):
    return keras.ops.convert_to_numpy(
        keras_sgs.dependence_to_scaling(
            keras_sgs.spatial_dependence(fmap, kernel_size, **kwargs)
        )
    )


def find_layer(model, name):
    (layer,) = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if layer.name == name
    ]
    return layer


def mask_of(model, layer_name):
    wrapper = keras_sgs.sgs_wrapper.find_sgs_wrapper(model.optimizer)
    kernel = find_layer(model, layer_name).kernel
    return keras.ops.convert_to_numpy(wrapper.get_mask(kernel))[..., 0, 0]


def functional():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 5, padding="same", dilation_rate=2, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def compile_sgs(model, **kwargs):
    model.compile(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.05, momentum=0.9), **kwargs
        ),
        LOSS,
    )
    return model


def conv_classifier(
    input_shape=(32, 32, 3), filters=4, classes=10, conv_name=None, name=None
):
    """Input, a 3x3 conv named `conv_name`, global average pooling, Dense."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(filters, 3, padding="same", name=conv_name),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ],
        name=name,
    )


def test_masks_equal_estimator_on_captured_inputs(cifar10_train):
    images, labels = cifar10_train
    model = compile_sgs(functional())
    held_out = images[:64]
    callback = keras_sgs.MIScalingCallback(held_out, warmup=0)
    model.fit(
        images[64:128],
        labels[64:128],
        epochs=1,
        verbose=0,
        callbacks=[callback],
    )
    # Refresh again after training and compare with each layer's input.
    c1_input = held_out
    c2_input = keras.Model(model.inputs, model.get_layer("c2").input).predict(
        held_out, verbose=0
    )
    callback.refresh()
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(c1_input), atol=1e-5
    )
    np.testing.assert_allclose(
        mask_of(model, "c2"),
        expected_mask(c2_input, (5, 5), dilation_rate=2),
        atol=1e-5,
    )
    assert mask_of(model, "c1").mean() == pytest.approx(1.0, abs=1e-5)


def _sequential():
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, padding="same", name="c1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 3, padding="same", name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def _nested():
    inner = keras.Sequential(
        [
            keras.Input((32, 32, 8)),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 3, padding="same", name="c2"),
        ],
        name="inner",
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(inner(x))
    return keras.Model(inputs, keras.layers.Dense(10)(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.c1 = keras.layers.Conv2D(8, 3, padding="same", name="c1")
        self.c2 = keras.layers.Conv2D(8, 3, padding="same", name="c2")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(10)

    def call(self, x):
        # c2 is called twice: its first input is the one that counts.
        y = self.c2(keras.ops.relu(self.c1(x)))
        return self.head(self.pool(self.c2(y)))


@pytest.mark.parametrize("make", [_sequential, _nested, Subclassed])
def test_model_kinds(make, cifar10_train):
    images, labels = cifar10_train
    model = make()
    model(images[:1])
    compile_sgs(model)
    held_out = images[:32]
    callback = keras_sgs.MIScalingCallback(held_out, warmup=0)
    model.fit(
        images[:32], labels[:32], epochs=1, verbose=0, callbacks=[callback]
    )
    callback.refresh()
    c1 = find_layer(model, "c1")
    c2_input = keras.ops.relu(c1(keras.ops.convert_to_tensor(held_out)))
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(held_out), atol=1e-5
    )
    np.testing.assert_allclose(
        mask_of(model, "c2"), expected_mask(c2_input), atol=1e-5
    )


def test_schedule_logs_and_dataset_input(cifar10_train):
    images, labels = cifar10_train
    model = compile_sgs(functional())
    batches = [
        (images[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)
    ]
    callback = keras_sgs.MIScalingCallback(
        iter(batches), warmup=1, every=2, num_batches=2
    )
    assert callback.data.shape == (32, 32, 32, 3)
    history = model.fit(
        images[:32], labels[:32], epochs=5, verbose=0, callbacks=[callback]
    )
    refreshed = [s > 0 for s in history.history["sgs_refresh_seconds"]]
    assert refreshed == [False, True, False, True, False]
    assert history.history["sgs_mask_max"][0] == 1.0  # warm-up: ones
    assert history.history["sgs_mask_max"][1] > 1.0


def test_non_finite_estimate_keeps_previous_mask(cifar10_train):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    dead = keras.layers.Conv2D(
        8, 1, kernel_initializer="zeros", trainable=False
    )(x)  # constant zeros
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(dead)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([x, dead]))
    model = compile_sgs(keras.Model(inputs, keras.layers.Dense(10)(x)))
    model.optimizer.build(model.trainable_variables)
    previous = np.full((3, 3), 0.5)
    model.optimizer.set_mask(find_layer(model, "c2").kernel, previous)
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=0)
    with pytest.warns(
        UserWarning,
        match="kernel 'c2/kernel' is undefined.*8 of 8 input channels are "
        "constant.*keeps its previous mask",
    ):
        model.fit(
            images[:32], labels[:32], epochs=1, verbose=0, callbacks=[callback]
        )
    np.testing.assert_array_equal(mask_of(model, "c2"), previous)
    assert np.all(np.isfinite(mask_of(model, "c1")))
    assert not np.allclose(mask_of(model, "c1"), 1.0)


class _NaNIntoKernel(keras.callbacks.Callback):
    """Puts a NaN into a kernel after the first epoch (a diverged step) and
    records the masks at each epoch's end."""

    def __init__(self, layer_name):
        super().__init__()
        self.layer_name = layer_name
        self.masks = []

    def on_epoch_end(self, epoch, logs=None):
        self.masks.append(mask_of(self.model, "c2"))
        if epoch == 0:
            kernel = find_layer(self.model, self.layer_name).kernel
            value = keras.ops.convert_to_numpy(kernel).copy()
            value[1, 1, 0, 0] = np.nan
            kernel.assign(value)


def test_nan_injected_into_a_kernel_during_fit(cifar10_train):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3))
    # No ReLU between the convs: relu(NaN) is 0 on some backends.
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = compile_sgs(keras.Model(inputs, keras.layers.Dense(10)(x)))
    injector = _NaNIntoKernel("c1")
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=1)
    with pytest.warns(UserWarning, match="undefined.*hold NaN or inf.*keeps"):
        model.fit(
            images[:32],
            labels[:32],
            epochs=3,
            verbose=0,
            callbacks=[callback, injector],
        )
    first, second, third = injector.masks
    np.testing.assert_array_equal(first, 1.0)  # warm-up
    # Epoch 2: one of c2's input channels is NaN and is left out.
    assert np.all(np.isfinite(second)) and not np.allclose(second, 1.0)
    # Epoch 3: the whole model is NaN, the mask stays as it was.
    np.testing.assert_array_equal(third, second)


def test_mixed_float16_and_layers_argument(cifar10_train):
    images, labels = cifar10_train
    keras.config.set_dtype_policy("mixed_float16")
    model = compile_sgs(functional())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=0, layers=["c1"])
    model.fit(
        images[:32], labels[:32], epochs=1, verbose=0, callbacks=[callback]
    )
    np.testing.assert_allclose(
        mask_of(model, "c1"),
        expected_mask(images[:32].astype("float16")),
        atol=1e-5,
    )
    np.testing.assert_array_equal(mask_of(model, "c2"), 1.0)


@tensorflow_only
def test_mirrored_strategy_replicas_train_with_new_masks(
    cifar10_train, mirrored_strategy
):
    images, labels = cifar10_train
    strategy = mirrored_strategy
    with strategy.scope():
        model = compile_sgs(functional())
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=0)
    model.fit(
        images[:32],
        labels[:32],
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[callback],
    )
    mask = model.optimizer.get_mask(model.get_layer("c1").kernel)
    replicas = [r.numpy()[..., 0, 0] for r in mask.value.values]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
    np.testing.assert_allclose(
        replicas[0], expected_mask(images[:32]), atol=1e-5
    )


def test_backup_and_restore_resumes_masks_and_schedule(cifar10_train, tmp_path):
    images, labels = cifar10_train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    model = compile_sgs(functional())
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=1, every=2)
    with pytest.raises(RuntimeError):
        model.fit(
            images[:32],
            labels[:32],
            epochs=4,
            verbose=0,
            callbacks=[backup, callback, Interrupt()],
        )
    saved = mask_of(model, "c1")
    assert not np.allclose(saved, 1.0)  # refreshed at epoch 1

    class Check(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                self.seen = mask_of(self.model, "c1")

    model = compile_sgs(functional())
    check = Check()
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=1, every=2)
    history = model.fit(
        images[:32],
        labels[:32],
        epochs=4,
        verbose=0,
        callbacks=[backup, callback, check],
    )
    np.testing.assert_array_equal(check.seen, saved)  # epoch 2: no refresh
    refreshed = [s > 0 for s in history.history["sgs_refresh_seconds"]]
    assert refreshed == [False, True]  # epochs 2 and 3: 3 = 1 + 2


class LazySubclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.c1 = keras.layers.Conv2D(8, 3, padding="same", name="c1")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(10)

    def call(self, x):
        return self.head(self.pool(self.c1(x)))


def _lazy_sequential():
    return keras.Sequential(
        [
            keras.layers.Conv2D(8, 3, padding="same", name="c1"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


@pytest.mark.parametrize("make", [LazySubclassed, _lazy_sequential])
def test_models_without_variables_before_fit(make, cifar10_train):
    """No call before `fit`: the variables appear in the first step."""
    images, labels = cifar10_train
    model = compile_sgs(make())
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=1)
    history = model.fit(
        images[:32], labels[:32], epochs=2, verbose=0, callbacks=[callback]
    )
    assert history.history["sgs_refresh_seconds"][1] > 0
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(images[:32]), atol=1e-5
    )
    # The optimizer was not built on an empty variable list.
    model.fit(images[:32], labels[:32], epochs=1, verbose=0)


def test_transfer_learning_with_one_callback(cifar10_train):
    """The Keras transfer-learning guide: a frozen base under a new head,
    then the base unfrozen, recompiled and fine-tuned."""
    images, labels = cifar10_train
    base = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, padding="same", name="c1"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="base",
    )
    base.trainable = False
    model = keras.Sequential([base, keras.layers.Dense(10)])
    callback = keras_sgs.MIScalingCallback(images[:32])
    compile_sgs(model)
    with (
        pytest.warns(UserWarning, match="no conv kernel to scale"),
        pytest.warns(UserWarning, match="no layer to refresh"),
    ):
        history = model.fit(
            images[:32], labels[:32], epochs=2, verbose=0, callbacks=[callback]
        )
    assert history.history["sgs_refresh_seconds"] == [0.0, 0.0]
    base.trainable = True
    compile_sgs(model)
    history = model.fit(
        images[:32], labels[:32], epochs=2, verbose=0, callbacks=[callback]
    )
    assert history.history["sgs_refresh_seconds"][1] > 0
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(images[:32]), atol=1e-5
    )


def test_held_out_dict_and_max_images(cifar10_train):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = compile_sgs(keras.Model({"image": inputs}, outputs))
    callback = keras_sgs.MIScalingCallback({"image": images}, max_images=40)
    assert callback.data["image"].shape == (40, 32, 32, 3)
    model.fit(
        {"image": images[:32]},
        labels[:32],
        epochs=2,
        verbose=0,
        callbacks=[callback],
    )
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(images[:40]), atol=1e-5
    )
    # Arrays are cut to max_images (default 512), and so are batches.
    big = np.zeros((600, 4, 4, 3), "float32")
    assert keras_sgs.MIScalingCallback(big).data.shape[0] == 512
    batches = [(big[:300], None), (big[300:], None)]
    assert (
        keras_sgs.MIScalingCallback(iter(batches), max_images=320).data.shape[0]
        == 320
    )


def test_kernels_without_centre_are_left_alone(cifar10_train):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 4, strides=4, name="patchify4")(inputs)
    x = keras.layers.Conv2D(8, 2, padding="same", name="even2")(x)
    x = keras.layers.Conv2D(8, 3, strides=3, name="patchify3")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = compile_sgs(keras.Model(inputs, outputs))
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=0)
    with pytest.warns(
        UserWarning,
        match="'patchify4/kernel', 'even2/kernel', 'patchify3/kernel'",
    ):
        model.fit(
            images[:32], labels[:32], epochs=1, verbose=0, callbacks=[callback]
        )
    for name in ("patchify4", "even2", "patchify3"):
        np.testing.assert_array_equal(mask_of(model, name), 1.0)
    assert not np.allclose(mask_of(model, "c1"), 1.0)
    with pytest.raises(
        ValueError, match=r"no centre pixel.*\['even2/kernel'\]"
    ):
        model.fit(
            images[:32],
            labels[:32],
            epochs=1,
            verbose=0,
            callbacks=[
                keras_sgs.MIScalingCallback(images[:32], layers=["c1", "even2"])
            ],
        )


def test_capture_without_patching_for_graph_models():
    from keras_sgs._layer_inputs import input_submodel

    for model in (functional(), _sequential()):
        layers = [find_layer(model, "c1"), find_layer(model, "c2")]
        assert input_submodel(model, layers) is not None
    nested = _nested()  # c2 lives in an inner model: recorded instead
    layers = [find_layer(nested, "c1"), find_layer(nested, "c2")]
    assert input_submodel(nested, layers) is None
    subclassed = Subclassed()
    subclassed(np.zeros((1, 32, 32, 3), "float32"))
    assert input_submodel(subclassed, [subclassed.c1]) is None


@jax_only
def test_a_refresh_compiles_the_capture_and_one_estimate_per_shape_on_jax(
    jax_compilations,
):
    """The first refresh compiles the forward pass and the estimate of each
    map shape, nothing else: the masks are scaled in numpy, not by eager
    ops that compile once per kernel shape."""
    model = compile_sgs(functional())
    callback = keras_sgs.MIScalingCallback(
        np.random.default_rng(0).random((8, 32, 32, 3), "float32")
    )
    callback.set_model(model)
    model.optimizer.build(model.trainable_variables)  # its zeros compile
    names = jax_compilations(callback.refresh)
    assert names.count("dependence") == 2, names  # c1 and c2
    assert set(names) <= {"stateless", "dependence", "stage"}, names


def test_recording_ignores_other_threads_and_leaves_no_patch():
    import threading

    from keras_sgs._layer_inputs import recording_inputs

    layer = keras.layers.Conv2D(2, 3, padding="same", name="c")
    mine = np.ones((1, 5, 5, 1), "float32")
    other = np.full((1, 5, 5, 1), 7.0, "float32")
    layer(mine)
    with recording_inputs([layer]) as captured:
        thread = threading.Thread(target=layer, args=(other,))
        thread.start()
        thread.join()
        assert captured == [None]  # the other thread's call is not taken
        layer(mine)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(captured[0]), mine)
    # Recordings from several threads at once: serialised, none left over.
    errors = []

    def record():
        try:
            with recording_inputs([layer]) as got:
                layer(mine)
            assert got[0] is not None
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and "call" not in layer.__dict__


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"every": 0}, ValueError, "every=0"),
        ({"warmup": -1}, ValueError, "warmup=-1"),
        ({"k": 0}, ValueError, "k=0"),
        ({"layers": "c1"}, ValueError, "layers='c1'"),
        ({"data": 3}, ValueError, "int"),
        ({"data": iter([])}, ValueError, "empty"),
        ({"data": np.zeros((0, 32, 32, 3))}, ValueError, "no held-out input"),
        (
            {"data": {"image": np.zeros((0, 8, 8, 3))}},
            ValueError,
            "no held-out",
        ),
        ({"max_images": 0}, ValueError, "max_images=0"),
        ({"data": np.array(["a", "b"])}, ValueError, "numeric"),
        ({"data": np.zeros(5)}, ValueError, r"shape \(5,\)"),
        ({"every": 2.0}, ValueError, "every=2.0"),
        ({"k": float("nan")}, ValueError, "k=nan"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"data": np.zeros((2, 32, 32, 3), "float32"), **kwargs}
    with pytest.raises(error, match=match):
        keras_sgs.MIScalingCallback(**kwargs)


def test_numpy_scalar_arguments(cifar10_train):
    images, _ = cifar10_train
    callback = keras_sgs.MIScalingCallback(
        images[:8],
        every=np.int64(5),
        warmup=np.int32(1),
        k=np.float32(5),
        num_batches=np.int64(2),
        max_images=np.int64(4),
    )
    assert (callback.every, callback.warmup, callback.k) == (5, 1, 5.0)
    assert callback.data.shape[0] == 4


def test_misuse_in_fit(cifar10_train):
    images, labels = cifar10_train
    model = functional()
    model.compile(keras.optimizers.SGD(), LOSS)
    with pytest.raises(ValueError, match="SGSWrapper"):
        model.fit(
            images[:16],
            labels[:16],
            verbose=0,
            callbacks=[keras_sgs.MIScalingCallback(images[:16])],
        )
    model = compile_sgs(functional())
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        model.fit(
            images[:16],
            labels[:16],
            verbose=0,
            callbacks=[
                keras_sgs.MIScalingCallback(images[:16], layers=["nope"])
            ],
        )


def spatial_conv_kernels(model):
    """The kxk (k > 1) kernels of a model's conv layers, found from each
    layer's `kernel_size`: plain, depthwise and the depthwise half of
    separable convs (their pointwise kernel is 1x1)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if int(np.prod(getattr(layer, "kernel_size", (1,)))) == 1:
            continue
        for name in ("kernel", "depthwise_kernel"):
            if getattr(layer, name, None) is not None:
                found.append(getattr(layer, name))
    return found


@pytest.mark.parametrize(
    "name, size, depthwise",
    [
        ("MobileNetV2", 32, "DepthwiseConv2D"),
        ("Xception", 71, "SeparableConv2D"),
    ],
)
def test_keras_applications(name, size, depthwise, cifar10_train):
    """Real models nobody here wrote: a short `fit` with a refresh masks
    exactly their kxk kernels (depthwise and separable included), each
    with a finite mask of mean 1 that the refresh moved off ones."""
    images, labels = cifar10_train
    images = keras.ops.convert_to_numpy(
        keras.ops.image.resize(images[:16], (size, size))
    )
    model = getattr(keras.applications, name)(
        weights=None,
        input_shape=(size, size, 3),
        classes=10,
        classifier_activation=None,
    )
    compile_sgs(model)
    callback = keras_sgs.MIScalingCallback(images[:8], warmup=0, every=1)
    model.fit(
        images,
        labels[:16],
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[callback],
    )
    spatial = {id(v) for v in spatial_conv_kernels(model)}
    assert any(
        type(layer).__name__ == depthwise
        for layer in model._flatten_layers(include_self=False, recursive=True)
    )
    masked = []
    for variable in model.trainable_variables:
        mask = model.optimizer.get_mask(variable)
        assert (mask is not None) == (id(variable) in spatial), variable.path
        if mask is not None:
            masked.append(keras.ops.convert_to_numpy(mask)[..., 0, 0])
    assert len(masked) == len(spatial) > 10
    for mask in masked:
        assert np.all(np.isfinite(mask))
        np.testing.assert_allclose(mask.mean(), 1.0, rtol=1e-5)
    assert sum(not np.allclose(mask, 1.0) for mask in masked) > len(masked) / 2


# -- layers built but never called ---------------------------------------


class _Twin(keras.layers.Layer):
    """Builds two convs and calls one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.used = keras.layers.Conv2D(4, 3, padding="same", name="used")
        self.unused = keras.layers.Conv2D(4, 3, padding="same", name="unused")

    def build(self, input_shape):
        self.used.build(input_shape)
        self.unused.build(input_shape)

    def call(self, x):
        return self.used(x)


class _PreActResidual(keras.layers.Layer):
    """KerasHub DepthAnything's pre-activation residual layer: two 3x3
    convs named `convolution1` and `convolution2` in every block."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.convolution1 = keras.layers.Conv2D(
            filters, 3, padding="same", name="convolution1"
        )
        self.convolution2 = keras.layers.Conv2D(
            filters, 3, padding="same", name="convolution2"
        )

    def build(self, input_shape):
        self.convolution1.build(input_shape)
        self.convolution2.build(input_shape)

    def call(self, x):
        y = self.convolution1(keras.ops.relu(x))
        return x + self.convolution2(keras.ops.relu(y))


class _FusionBlock(keras.layers.Layer):
    """KerasHub DepthAnything's feature fusion layer: `residual_layer1`
    adds the previous block's output; the first block has none, so its
    `residual_layer1` is built and never called."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.residual_layer1 = _PreActResidual(filters, name="residual_layer1")
        self.residual_layer2 = _PreActResidual(filters, name="residual_layer2")

    def build(self, input_shape):
        self.residual_layer1.build(input_shape)
        self.residual_layer2.build(input_shape)

    def call(self, x, residual=None):
        if residual is not None:
            x = x + self.residual_layer1(residual)
        return self.residual_layer2(x)


def _twin_model():
    inputs = keras.Input((32, 32, 3))
    x = _Twin(name="twin")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def _fusion_model():
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    first = _FusionBlock(4, name="fusion1")(features)
    second = _FusionBlock(4, name="fusion2")(features, residual=first)
    x = keras.layers.GlobalAveragePooling2D()(second)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.mark.parametrize(
    "make, uncalled",
    [
        (_twin_model, ["twin/unused/kernel"]),
        (
            _fusion_model,
            [
                "fusion1/residual_layer1/convolution1/kernel",
                "fusion1/residual_layer1/convolution2/kernel",
            ],
        ),
    ],
)
def test_layers_built_but_never_called_keep_their_masks(
    make, uncalled, cifar10_train
):
    """Training goes on; one warning names the unused kernels by their
    unique paths (every fusion block has a `convolution1`)."""
    images, labels = cifar10_train
    model = compile_sgs(make())
    callback = keras_sgs.MIScalingCallback(images[:16], warmup=0)
    with pytest.warns(UserWarning) as record:
        history = model.fit(
            images[:16], labels[:16], epochs=2, verbose=0, callbacks=[callback]
        )
    assert history.history["sgs_refresh_seconds"][1] > 0
    messages = [str(w.message) for w in record]
    (message,) = [m for m in messages if "does not call" in m]
    wrapper = model.optimizer
    for variable in model.trainable_variables:
        mask = wrapper.get_mask(variable)
        if mask is not None:
            unused = variable.path in uncalled
            assert (f"'{variable.path}'" in message) == unused
            mask = keras.ops.convert_to_numpy(mask)
            assert np.allclose(mask, 1.0) == unused, variable.path
    # A kernel path selects one of the layers that share a name.
    if make is _fusion_model:
        path = "fusion2/residual_layer1/convolution1/kernel"
        callback = keras_sgs.MIScalingCallback(images[:16], layers=[path])
        callback.set_model(model)
        assert list(callback.refresh()) == [path]


# -- held-out data in the forms `fit` takes --------------------------------


class _Batches(keras.utils.PyDataset):
    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images) // 8

    def __getitem__(self, index):
        part = slice(8 * index, 8 * index + 8)
        return self.images[part], self.labels[part]


def _torch_data_loader(images, labels):
    import torch

    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(images), torch.from_numpy(labels.astype("int64"))
    )
    return torch.utils.data.DataLoader(dataset, batch_size=8)


def _tf_dataset(images, labels):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


@pytest.mark.parametrize(
    "form",
    [
        lambda x, y: x,
        lambda x, y: keras.ops.convert_to_tensor(x),
        lambda x, y: (x,),
        lambda x, y: (x, y),
        lambda x, y: (x, y, np.ones(len(y))),
        lambda x, y: [x, keras.utils.to_categorical(y, 10)],
        _tf_dataset,
        _Batches,
        lambda x, y: ((x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)),
        lambda x, y: iter([[x[i : i + 8], y[i : i + 8]] for i in (0, 8)]),
        _torch_data_loader,
    ],
    ids=[
        "array",
        "tensor",
        "x_tuple",
        "x_y",
        "x_y_weights",
        "list_x_onehot",
        "tf_data",
        "py_dataset",
        "generator",
        "list_batches",
        "torch_data_loader",
    ],
)
def test_held_out_data_in_the_forms_fit_takes(form, cifar10_train):
    """Only the inputs are kept, whatever the form: labels (int or
    one-hot) are never taken for a second input."""
    images, labels = cifar10_train
    callback = keras_sgs.MIScalingCallback(
        form(images[:16], labels[:16]), num_batches=2
    )
    np.testing.assert_array_equal(callback.data, images[:16])


def test_a_dict_without_an_input_of_a_dict_model_fails_before_training(
    cifar10_train,
):
    images, labels = cifar10_train
    a = keras.Input((32, 32, 3), name="a")
    b = keras.Input((32, 32, 3), name="b")
    x = keras.layers.Conv2D(3, 3, padding="same", name="c1")(a)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([x, b]))
    model = compile_sgs(
        keras.Model({"a": a, "b": b}, keras.layers.Dense(10)(x))
    )
    data = {"a": images[:16], "b": images[16:32]}
    with pytest.raises(
        ValueError,
        match=r"do not fit the model. Received: inputs of shapes "
        r"\{'a': \(16, 32, 32, 3\)\}",
    ):
        model.fit(
            data,
            labels[:16],
            verbose=0,
            callbacks=[keras_sgs.MIScalingCallback({"a": images[:16]})],
        )


@pytest.mark.parametrize(
    "shape",
    [(32, 32, 3), (1, 24, 24, 3), (1, 40, 40, 3), (1, 32, 32, 1)],
    ids=["no batch axis", "24x24", "40x40", "1 channel"],
)
def test_inputs_of_the_wrong_shape_fail_before_training(shape):
    """Found with keras.io's examples: these passed the start-of-fit check
    and failed at the first refresh, after `warmup` epochs of training."""
    model = compile_sgs(conv_classifier(filters=2, classes=2))
    data = np.zeros(shape, "float32")
    epochs = []
    count = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epochs.append(epoch)
    )
    with pytest.raises(
        ValueError,
        match=rf"Received: an array of shape {re.escape(str(shape))}; the "
        r"model's input `.*` takes shape \(None, 32, 32, 3\)",
    ):
        model.fit(
            np.zeros((4, 32, 32, 3), "float32"),
            np.zeros(4, "int32"),
            verbose=0,
            callbacks=[keras_sgs.MIScalingCallback(data, warmup=2), count],
        )
    assert epochs == []


def test_inputs_are_checked_against_the_model_before_training(cifar10_train):
    images, labels = cifar10_train
    a = keras.Input((32, 32, 3), name="a")
    b = keras.Input((32, 32, 3), name="b")
    x = keras.layers.Conv2D(3, 3, padding="same", name="c1")(a)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([x, b]))
    model = compile_sgs(keras.Model([a, b], keras.layers.Dense(10)(x)))
    inputs = [images[:16], images[16:32]]

    class CountEpochs(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_begin(self, epoch, logs=None):
            CountEpochs.epochs += 1

    # A list is read as (x, y), as `fit` reads a batch: one input, not two.
    with pytest.raises(
        ValueError,
        match=r"Received: inputs of shapes \(16, 32, 32, 3\); the model "
        r"expects inputs of shapes \[\(None, 32, 32, 3\), "
        r"\(None, 32, 32, 3\)\]",
    ):
        model.fit(
            inputs,
            labels[:16],
            verbose=0,
            callbacks=[keras_sgs.MIScalingCallback(inputs), CountEpochs()],
        )
    assert CountEpochs.epochs == 0
    for data in [(inputs,), {"a": inputs[0], "b": inputs[1]}]:
        callback = keras_sgs.MIScalingCallback(data, warmup=0)
        model.fit(inputs, labels[:16], verbose=0, callbacks=[callback])
        np.testing.assert_allclose(
            mask_of(model, "c1"), expected_mask(inputs[0]), atol=1e-5
        )


def test_a_short_fit_with_the_callback_warns_nothing(cifar10_train):
    """Not even a `DeprecationWarning` (which pyproject.toml hides from the
    other tests): numpy 2 deprecates the `__array__` of Keras variables
    and PyTorch tensors, which `keras.ops.convert_to_numpy` calls."""

    images, labels = cifar10_train
    model = compile_sgs(functional())
    callback = keras_sgs.MIScalingCallback(images[:16], warmup=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(
            images[:16], labels[:16], epochs=2, verbose=0, callbacks=[callback]
        )
        keras_sgs.plotting.model_masks(model)  # the examples' masks.png


def test_the_wrapper_inside_a_multi_optimizer(cifar10_train, tmp_path):
    """The wrapper's own error message tells users to put it inside a
    `MultiOptimizer`; the callback and plot_masks then find it there."""
    images, labels = cifar10_train
    model = conv_classifier(conv_name="c1")
    wrapper = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.01), name="sgs")
    optimizer = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(
            keras.optimizers.Adam(1e-3), {".*/c1/.*": wrapper}
        )
    )
    model.compile(optimizer, LOSS)
    callback = keras_sgs.MIScalingCallback(images[:16], warmup=0)
    model.fit(images[:32], labels[:32], verbose=0, callbacks=[callback])
    np.testing.assert_allclose(
        mask_of(model, "c1"), expected_mask(images[:16]), atol=1e-5
    )
    masks = keras_sgs.plotting.model_masks(model)
    np.testing.assert_array_equal(
        masks[model.get_layer("c1").kernel.path], mask_of(model, "c1")
    )
    two = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(
            keras_sgs.SGSWrapper(keras.optimizers.SGD(), name="a"),
            {"c1/.*": keras_sgs.SGSWrapper(keras.optimizers.SGD(), name="b")},
        )
    )
    with pytest.raises(
        ValueError,
        match=r"several SGSWrappers.*Received: \['(a', 'b|b', 'a)'\]",
    ):
        keras_sgs.sgs_wrapper.find_sgs_wrapper(two)


def test_warmup_0_refreshes_a_subclassed_model_of_built_parts(cifar10_train):
    """keras.io's Distiller pattern: `call` returns the student's output,
    both parts are built, the subclassed model is not called before `fit`.
    On TensorFlow the epoch-0 refresh was skipped ("no variables yet"),
    while JAX and PyTorch refreshed."""
    images, labels = cifar10_train

    class Distiller(keras.Model):
        def __init__(self, student, teacher):
            super().__init__()
            self.student, self.teacher = student, teacher

        def call(self, x):
            return self.student(x)

    def part(name):
        return conv_classifier(conv_name=f"{name}_c", name=name)

    model = compile_sgs(Distiller(part("student"), part("teacher")))
    callback = keras_sgs.MIScalingCallback(images[:16], warmup=0, every=5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no variables yet")
        warnings.filterwarnings("ignore", message=".*does not call them")
        model.fit(images[:32], labels[:32], verbose=0, callbacks=[callback])
    # The refresh ran before the first step: the first conv saw the images.
    np.testing.assert_allclose(
        mask_of(model, "student_c"), expected_mask(images[:16]), atol=1e-5
    )


def test_blank_images_keep_the_mask_with_a_warning():
    """The guide's promise, with `padding="same"` (found with keras.io's
    examples: the zero border made the mask of the border alone, corners
    0.02-0.04): constant images give no estimate, the layer keeps its mask
    and a warning says why."""
    model = compile_sgs(conv_classifier((16, 16, 3), classes=2, conv_name="c1"))
    blank = np.full((8, 16, 16, 3), 0.5, "float32")
    callback = keras_sgs.MIScalingCallback(blank, warmup=0)
    with pytest.warns(UserWarning, match="3 of 3 input channels are constant"):
        model.fit(blank, np.zeros(8, "int32"), verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(mask_of(model, "c1"), np.ones((3, 3)))


@tensorflow_only
def test_a_warning_when_tensorboard_comes_first(tmp_path, cifar10_train):
    """TensorBoard writes an epoch's logs in `on_epoch_end`, in list order:
    listed before the callback, it never sees the sgs_* scalars."""
    images, labels = cifar10_train
    model = compile_sgs(conv_classifier(filters=2))

    def fit(*callbacks):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(images[:8], labels[:8], verbose=0, callbacks=callbacks)
        return [
            str(w.message) for w in caught if "TensorBoard" in str(w.message)
        ]

    board = keras.callbacks.TensorBoard(str(tmp_path / "logs"))
    mi_masks = keras_sgs.MIScalingCallback(images[:8])
    (message,) = fit(board, mi_masks)
    assert "List MIScalingCallback first" in message
    assert fit(mi_masks, board) == []

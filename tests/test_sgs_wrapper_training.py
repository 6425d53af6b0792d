"""SGSWrapper in real training set-ups: saving and restoring, resuming,
tf.distribute on two logical CPUs, and mixed precision."""

import warnings

import keras
import numpy as np
import pytest
from conftest import tensorflow_only

import keras_sgs


def small_model(dtype=None, batch_norm=True):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1", dtype=dtype)(
        inputs
    )
    if batch_norm:
        x = keras.layers.BatchNormalization(dtype=dtype)(x)
    x = keras.layers.ReLU(dtype=dtype)(x)
    x = keras.layers.DepthwiseConv2D(5, padding="same", name="dw", dtype=dtype)(
        x
    )
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
    outputs = keras.layers.Dense(10, dtype=dtype, name="head")(x)
    return keras.Model(inputs, outputs)


def compiled(model, **kwargs):
    model.compile(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.05, momentum=0.9), **kwargs
        ),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def kernels(model):
    return [model.get_layer("c1").kernel, model.get_layer("dw").kernel]


def random_masks(model, seed):
    rng = np.random.default_rng(seed)
    optimizer = model.optimizer
    masks = []
    for kernel in kernels(model):
        mask = rng.uniform(0.2, 2.0, size=tuple(kernel.shape[:-2]))
        optimizer.set_mask(kernel, mask)
        masks.append(mask.astype("float32"))
    return masks


def mask_values(model):
    optimizer = model.optimizer
    return [
        keras.ops.convert_to_numpy(optimizer.get_mask(k))[..., 0, 0]
        for k in kernels(model)
    ]


def momentums(optimizer):
    return [keras.ops.convert_to_numpy(m) for m in optimizer.momentums]


def test_keras_file_round_trip(cifar10_train, tmp_path):
    images, labels = cifar10_train
    model = compiled(small_model())
    model.fit(images[:64], labels[:64], batch_size=32, verbose=0)
    masks = random_masks(model, 0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True
    assert isinstance(loaded.optimizer, keras_sgs.SGSWrapper)
    for a, b in zip(mask_values(loaded), masks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        momentums(loaded.optimizer.inner_optimizer),
        momentums(model.optimizer.inner_optimizer),
    ):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.optimizer.iterations) == 2
    # Training goes on from the same state on both.
    model.fit(images[64:96], labels[64:96], verbose=0)
    loaded.fit(images[64:96], labels[64:96], verbose=0)
    for a, b in zip(kernels(model), kernels(loaded)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            rtol=1e-5,
            atol=1e-6,
        )


def test_weights_file_round_trip(cifar10_train, tmp_path):
    images, labels = cifar10_train
    model = compiled(small_model())
    model.fit(images[:32], labels[:32], verbose=0)
    masks = random_masks(model, 1)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    fresh = compiled(small_model())
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    for a, b in zip(mask_values(fresh), masks):
        np.testing.assert_array_equal(a, b)


@tensorflow_only
def test_tf_train_checkpoint(cifar10_train, tmp_path):
    import tensorflow as tf

    images, labels = cifar10_train
    model = compiled(small_model())
    model.fit(images[:32], labels[:32], verbose=0)
    masks = random_masks(model, 2)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
        str(tmp_path / "ckpt")
    )
    fresh = compiled(small_model())
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(
        path
    ).assert_consumed()
    for a, b in zip(mask_values(fresh), masks):
        np.testing.assert_array_equal(a, b)


class _SetMasksAtEpoch(keras.callbacks.Callback):
    """Sets random masks at the start of each epoch; records them."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.fail_at = fail_at
        self.seen = {}

    def on_epoch_begin(self, epoch, logs=None):
        # On TensorFlow without a strategy, fit() builds the optimizer only
        # in the first traced step.
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.seen[epoch] = mask_values(self.model)
        if epoch == self.fail_at:
            raise RuntimeError("interrupted")
        random_masks(self.model, 10 + epoch)


def test_backup_and_restore_resumes_masks(cifar10_train, tmp_path):
    images, labels = cifar10_train
    backup = str(tmp_path / "backup")
    interrupted = _SetMasksAtEpoch(fail_at=2)
    model = compiled(small_model())
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            images[:32],
            labels[:32],
            epochs=4,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), interrupted],
        )
    resumed = _SetMasksAtEpoch()
    model = compiled(small_model())
    model.fit(
        images[:32],
        labels[:32],
        epochs=4,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup), resumed],
    )
    # Epochs 0 and 1 finished; the run resumes at epoch 2 with the masks
    # that epoch 1 trained with.
    assert sorted(resumed.seen) == [2, 3]
    for a, b in zip(resumed.seen[2], interrupted.seen[2]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(resumed.seen[2][0], 1.0)


def test_mixed_float16(cifar10_train):
    images, labels = cifar10_train
    keras.config.set_dtype_policy("mixed_float16")
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [2], [0.1, 0.01]
    )
    inner = keras.optimizers.SGD(schedule)
    model = small_model()
    model.compile(
        keras_sgs.SGSWrapper(inner),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, keras_sgs.SGSWrapper)
    model.optimizer.build(model.trainable_variables)
    sgs = model.optimizer.inner_optimizer
    kernel = model.get_layer("c1").kernel
    assert kernel.dtype == "float32"
    # A mask that freezes every position but the centre.
    freeze = np.zeros((3, 3))
    freeze[1, 1] = 1.0
    sgs.set_mask(kernel, freeze)
    before = keras.ops.convert_to_numpy(kernel).copy()
    history = model.fit(images[:64], labels[:64], batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = keras.ops.convert_to_numpy(kernel)
    changed = np.abs(after - before).max(axis=(2, 3))
    assert changed[1, 1] > 0
    np.testing.assert_array_equal(np.delete(changed.ravel(), 4), 0.0)
    # The schedule reaches the inner optimizer through both wrappers.
    assert int(inner.iterations) == 4
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert float(sgs.learning_rate) == pytest.approx(0.01)


def test_mixed_float16_learning_rate_callback(cifar10_train):
    images, labels = cifar10_train
    keras.config.set_dtype_policy("mixed_float16")
    inner = keras.optimizers.SGD(0.1)
    model = small_model()
    model.compile(
        keras_sgs.SGSWrapper(inner),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        images[:32],
        labels[:32],
        epochs=2,
        verbose=0,
        callbacks=[
            keras.callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))
        ],
    )
    assert float(inner.learning_rate) == pytest.approx(0.05)


@tensorflow_only
@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_mirrored_strategy_matches_one_device(
    cifar10_train, mode, mirrored_strategy
):
    import tensorflow as tf

    images, labels = cifar10_train
    strategy = mirrored_strategy
    results = []
    for scope, devices in [
        (strategy.scope(), ["CPU:0", "CPU:1"]),
        (tf.distribute.get_strategy().scope(), ["CPU:0"]),
    ]:
        keras.utils.set_random_seed(0)
        with scope:
            model = compiled(small_model(batch_norm=False), mode=mode)
            model.optimizer.build(model.trainable_variables)
        # Outside the train step and outside the scope, as a callback would.
        masks = random_masks(model, 3)
        mask = model.optimizer.get_mask(model.get_layer("c1").kernel)
        replicas = getattr(mask.value, "values", (mask.value,))
        assert [r.device[-5:] for r in replicas] == devices
        for replica in replicas:
            np.testing.assert_array_equal(replica.numpy()[..., 0, 0], masks[0])
        changer = _SetMasksAtEpoch()
        model.fit(
            images[:64],
            labels[:64],
            batch_size=16,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[changer],
        )
        for replica in getattr(mask.value, "values", (mask.value,)):
            np.testing.assert_array_equal(
                replica.numpy()[..., 0, 0], mask_values(model)[0]
            )
        results.append([keras.ops.convert_to_numpy(v) for v in model.weights])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@tensorflow_only
def test_update_mode_zero_mask_under_mirrored_strategy(
    cifar10_train, mirrored_strategy
):
    images, labels = cifar10_train
    with mirrored_strategy.scope():
        model = small_model(batch_norm=False)
        model.compile(
            keras_sgs.SGSWrapper(
                keras.optimizers.Adam(0.5),
                mode="update",
                masks={"c1": [[1, 0, 1], [0, 2, 0], [1, 0, 1]]},
            ),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    kernel = model.get_layer("c1").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    model.fit(images[:64], labels[:64], batch_size=16, epochs=2, verbose=0)
    after = keras.ops.convert_to_numpy(kernel)
    frozen = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(after[frozen], before[frozen])
    assert not np.allclose(after[~frozen], before[~frozen])


def test_loading_weights_before_the_build_warns_once_as_keras_does(tmp_path):
    """An unbuilt optimizer loads nothing and Keras says so once; the
    wrapper adds no second warning (the inner optimizer's entry gives
    Keras's)."""

    path = str(tmp_path / "model.weights.h5")
    warned = {}
    for name, make in [
        ("sgd", lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
        ("sgs", lambda: keras_sgs.SGSWrapper(keras.optimizers.SGD(0.05, 0.9))),
    ]:
        model = small_model()
        model.compile(make(), "mse")
        model.optimizer.build(model.trainable_variables)
        model.save_weights(path)
        fresh = small_model()
        fresh.compile(make(), "mse")
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            fresh.load_weights(path)
        warned[name] = [
            str(w.message)
            for w in record
            if "Skipping variable loading" in str(w.message)
        ]
    assert len(warned["sgs"]) == len(warned["sgd"]) == 1, warned

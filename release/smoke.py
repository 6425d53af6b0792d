"""Smoke test of an installed keras_sgs, run outside the repository.

`release/check.py` copies this file and the shipped CIFAR-10 test sample
into an empty folder and runs it there,

```sh
python -I smoke.py test.tfrecord
```

with the Python of a fresh virtual environment that holds the built wheel
with its `tfrecords` extra and one Keras backend (JAX), nothing else. It
checks what a user gets:

1. `import keras_sgs` comes from that environment (not a checkout), with
   the version of the installed distribution, and no TensorFlow or
   PyTorch is needed; `keras_sgs.tfrecords` reads the sample's images.
2. A few `SGSWrapper` steps on a small conv net: a kernel position whose
   mask is 0 does not move, the others do.
3. One `spatial_dependence`: neighbours that are copies of each other
   have `D = 1`, unrelated rows have a small `D`.
4. One refresh of `MIScalingCallback` in `fit` on the sample's images:
   every mask changes, is finite, has mean 1 and its largest value at
   the centre.

Exits non-zero, with the failed check named, if anything is wrong.
"""

import importlib.metadata
import importlib.util
import os
import sys

import numpy as np


def check(condition, message):
    if not condition:
        raise SystemExit(f"wheel smoke test FAILED: {message}")


def check_install():
    import keras_sgs

    location = os.path.realpath(keras_sgs.__file__)
    check(
        location.startswith(os.path.realpath(sys.prefix)),
        f"keras_sgs imported from {location}, not from {sys.prefix}",
    )
    installed = importlib.metadata.version("keras-sgs")
    check(
        keras_sgs.__version__ == installed,
        f"keras_sgs.__version__ is {keras_sgs.__version__}, the installed "
        f"distribution is {installed}",
    )
    for absent in ("tensorflow", "torch"):
        check(
            importlib.util.find_spec(absent) is None,
            f"{absent} is installed: the environment should hold one backend",
        )
    print(f"keras_sgs {installed} from {location}")


def small_conv_net(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs)


def read_sample(path):
    """The first 128 images of a shipped TFRecord file, scaled to [0, 1]."""
    from keras_sgs import tfrecords

    images, labels = tfrecords.read_image_records(path, limit=128)
    check(
        images.shape == (128, 32, 32, 3) and set(labels) <= set(range(10)),
        f"{path}: images {images.shape}, labels {sorted(set(labels))}",
    )
    return images.astype("float32") / 255, labels


def check_wrapper_steps(keras, keras_sgs, x, y):
    mask = np.ones((3, 3), "float32")
    mask[0, 0] = 0.0
    model = small_conv_net(keras)
    model.compile(
        optimizer=keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1), masks=mask),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    to_numpy = keras.ops.convert_to_numpy
    before = {v.path: to_numpy(v) for v in model.trainable_variables}
    history = model.fit(x[:32], y[:32], batch_size=8, epochs=1, verbose=0)
    check(
        np.isfinite(history.history["loss"][-1]),
        f"loss after 4 steps is {history.history['loss']}",
    )
    for name in ("conv1", "conv2"):
        kernel = model.get_layer(name).kernel
        moved = np.abs(to_numpy(kernel) - before[kernel.path])
        check(
            np.all(moved[0, 0] == 0.0),
            f"{name}: the kernel moved where its mask is 0",
        )
        check(moved[1, 1].max() > 0.0, f"{name}: the centre did not move")
    print("SGSWrapper: 4 steps, masked position fixed, others trained")


def check_spatial_dependence(keras, keras_sgs):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(16, 12, 1, 4))
    feature_map = np.repeat(rows, 12, axis=2).astype("float32")  # x-constant
    d = keras_sgs.spatial_dependence(feature_map, (3, 3), padding="valid")
    d = keras.ops.convert_to_numpy(d)
    check(d.shape == (3, 3), f"spatial_dependence shape {d.shape}")
    check(
        np.allclose([d[1, 0], d[1, 1], d[1, 2]], 1.0, atol=1e-5),
        f"equal horizontal neighbours should give D = 1, got\n{d}",
    )
    check(
        np.all(d[0] < 0.5) and np.all(d[2] < 0.5),
        f"independent rows should give a small D, got\n{d}",
    )
    print("spatial_dependence: D =", np.array2string(d, precision=3))


def check_mi_refresh(keras, keras_sgs, x, y):
    model = small_conv_net(keras)
    wrapper = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.05, momentum=0.9))
    model.compile(
        optimizer=wrapper,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = keras_sgs.MIScalingCallback(x[64:], every=1, warmup=1)
    history = model.fit(
        x[:64], y[:64], batch_size=16, epochs=2, callbacks=[callback], verbose=0
    )
    seconds = history.history["sgs_refresh_seconds"]
    check(
        seconds[0] == 0 and seconds[1] > 0,
        f"expected one refresh, at epoch 1: sgs_refresh_seconds={seconds}",
    )
    for name in ("conv1", "conv2"):
        kernel = model.get_layer(name).kernel
        mask = keras.ops.convert_to_numpy(wrapper.get_mask(kernel))
        mask = mask.reshape(3, 3)
        check(np.all(np.isfinite(mask)), f"{name}: mask {mask}")
        check(
            not np.allclose(mask, 1.0),
            f"{name}: the refresh left the mask at ones",
        )
        check(
            abs(mask.mean() - 1.0) < 1e-5,
            f"{name}: mask mean {mask.mean()}",
        )
        check(
            mask[1, 1] == mask.max(),
            f"{name}: the centre is not the largest value:\n{mask}",
        )
    print(f"MIScalingCallback: one refresh in {seconds[1]:.2f} s")


def main():
    check_install()
    import keras

    import keras_sgs

    check(
        keras.backend.backend() == os.environ.get("KERAS_BACKEND"),
        f"Keras runs on {keras.backend.backend()}, KERAS_BACKEND is "
        f"{os.environ.get('KERAS_BACKEND')!r}",
    )
    keras.utils.set_random_seed(0)
    x, y = read_sample(sys.argv[1])
    check_wrapper_steps(keras, keras_sgs, x, y)
    check_spatial_dependence(keras, keras_sgs)
    check_mi_refresh(keras, keras_sgs, x, y)
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()

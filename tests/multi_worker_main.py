"""One worker of `test_multi_worker.py` (not a test module itself).

Usage: `TF_CONFIG=... python multi_worker_main.py RECORDS MODE OUT.npz`

Trains a small conv net with `SGSWrapper(mode=MODE)` and `MIScalingCallback`
under `MultiWorkerMirroredStrategy` on real CIFAR-10 images read from the
TFRecord file `RECORDS`, and saves the initial and final trainable weights
(`initial_i`, `final_i`) and the SGS mask of every conv kernel (`mask_i`) to
`OUT.npz`.
"""

import pathlib
import sys

# The same strategy set-up as the example scripts (with its work-around for
# Keras 3.15.1's multi-worker `fit()`).
sys.path.insert(
    0, str(pathlib.Path(__file__).resolve().parents[1] / "examples")
)
from strategies import multi_worker_strategy  # noqa: E402

# The strategy must exist before any other TensorFlow op runs in this
# process (it sets up the collective ops between the workers).
strategy = multi_worker_strategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sgs  # noqa: E402
from keras_sgs.tfrecords import read_image_records  # noqa: E402

TRAIN, HELD_OUT, GLOBAL_BATCH, EPOCHS = 64, 32, 16, 3


def conv_net():
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for i, filters in enumerate([8, 16, 16]):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs)


def trainable_values(model):
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def main(records_path, mode, out_path):
    images, labels = read_image_records(records_path, limit=TRAIN + HELD_OUT)
    images = images.astype(np.float32) / 255.0
    train = tf.data.Dataset.from_tensor_slices(
        (images[:TRAIN], labels[:TRAIN])
    ).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    # In-memory data has no files to shard by: shard the elements.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    train = train.with_options(options)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = conv_net()
        model.compile(
            keras_sgs.SGSWrapper(
                keras.optimizers.SGD(0.05, momentum=0.9), mode=mode
            ),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    initial = trainable_values(model)
    model.fit(
        train,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[
            keras_sgs.MIScalingCallback(images[TRAIN:], every=1, warmup=1)
        ],
    )
    masks = [
        keras.ops.convert_to_numpy(
            model.optimizer.get_mask(model.get_layer(f"conv{i}").kernel)
        )
        for i in range(3)
    ]
    arrays = {}
    for prefix, values in [
        ("initial", initial),
        ("final", trainable_values(model)),
        ("mask", masks),
    ]:
        arrays.update({f"{prefix}_{i}": v for i, v in enumerate(values)})
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])

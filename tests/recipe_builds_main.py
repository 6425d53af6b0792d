"""Prints, as JSON, what `benchmarks/accuracy.py` (through
`benchmarks/cifar.py`) and `examples/train_cifar.py` (through
`examples/training.py`) build for one data set and method: the backbone's
config and initial weights, the optimizer's config (SGD, schedule, masks,
coupled decay), the recipe's values and the augmentation.

Run by `tests/test_examples.py` in a process of its own (train_cifar.py
defines its flags on import). Usage: recipe_builds_main.py DATASET METHOD
"""

import hashlib
import json
import pathlib
import sys
import tempfile
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "examples")]

import cifar  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import run_callbacks  # noqa: E402
import tensorflow as tf  # noqa: E402
import train_cifar  # noqa: E402
import training  # noqa: E402
from absl import flags  # noqa: E402

import keras_sgs  # noqa: E402
from keras_sgs import recipes  # noqa: E402

STEPS = 1000  # the same total steps for both (see the test)
SEED = 3


def weights_digest(model):
    return [
        hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()
        for w in model.get_weights()
    ]


def augmentation_layers(layer):
    """The augmentation's layers: class and config without name and seed."""
    return [
        (
            type(sub).__name__,
            {
                k: v
                for k, v in sub.get_config().items()
                if k not in ("name", "seed")
            },
        )
        for sub in layer.layers
    ]


def study(dataset, method, image):
    job = {
        "dataset": dataset,
        "method": method,
        "model": "vgg11",
        "head": recipes.DATASETS[dataset].head,
        "width": 0.25,
        "epochs": recipes.CIFAR.epochs,
        "batch_size": recipes.CIFAR.batch_size,
        "lr": recipes.CIFAR.learning_rate,
        "weight_decay": recipes.CIFAR.weight_decay,
        "refresh_every": recipes.CIFAR.refresh_every,
        "refresh_warmup": recipes.CIFAR.refresh_warmup,
        "refresh_batches": recipes.CIFAR.refresh_batches,
        "mi_k": recipes.CIFAR.mi_k,
    }
    recipe = cifar.job_recipe(job)
    num_train = STEPS * recipe.batch_size // recipe.epochs
    keras.utils.clear_session()  # the same automatic names in both
    keras.utils.set_random_seed(0)
    backbone, model, optimizer, callbacks = cifar.build_run(
        job, np.zeros((512, 32, 32, 3), "uint8"), num_train
    )
    augmentation = model.get_layer("augmentation")
    augmented = recipes.augmentation(dataset, recipe, seed=SEED)(
        image[None], training=True
    )
    return {
        "backbone": backbone.get_config(),
        "weights": weights_digest(backbone),
        "optimizer": optimizer.get_config(),
        "recipe": recipe.__dict__,
        "refresh": [(c.every, c.warmup, c.k) for c in callbacks],
        "augmentation": augmentation_layers(augmentation),
        "augmented": keras.ops.convert_to_numpy(augmented[0]).tolist(),
    }


def example(dataset, method, image):
    flags.FLAGS(
        ["train_cifar", f"--dataset={dataset}", f"--method={method}"]
        + ["--width=0.25", "--data=unread", "--test_data=unread"]
    )
    config = types.SimpleNamespace(
        **{name: flags.FLAGS[name].value for name in flags.FLAGS}
    )
    task = train_cifar.task_from_flags(config)
    recipe = training.recipe_from_flags(config, config.lr)
    keras.utils.clear_session()  # the same automatic names in both
    keras.utils.set_random_seed(0)
    model, optimizer = training.build(
        config, task, task.num_classes, recipe, STEPS
    )
    augment = task.train_augment(SEED)
    augmented, _ = augment(tf.constant(image), tf.constant(0))
    with tempfile.TemporaryDirectory() as output_dir:
        callbacks = run_callbacks.make_callbacks(
            config,
            recipe,
            output_dir,
            run_callbacks.EpochHistory(f"{output_dir}/history.json"),
            np.zeros((8, 32, 32, 3), "float32"),
            tf.distribute.get_strategy(),
        )
    refresh = [
        (c.every, c.warmup, c.k)
        for c in callbacks
        if isinstance(c, keras_sgs.MIScalingCallback)
    ]
    return {
        "backbone": model.get_config(),
        "weights": weights_digest(model),
        "optimizer": optimizer.get_config(),
        "recipe": recipe.__dict__,
        "refresh": refresh,
        "augmentation": augmentation_layers(
            recipes.augmentation(dataset, recipe)
        ),
        "augmented": augmented.numpy().tolist(),
    }


if __name__ == "__main__":
    dataset, method = sys.argv[1:3]
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), "uint8")
    print(
        json.dumps(
            {
                "study": study(dataset, method, image),
                "example": example(dataset, method, image),
            },
            default=str,
        )
    )

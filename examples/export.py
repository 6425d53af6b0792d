r"""Exports a finished training run for serving: SavedModel and TFLite.

Reads `--run_dir`'s `run_flags.json` (written by `train_cifar.py` /
`train_imagenet.py`) to rebuild the run's data pipeline, loads its
`model.keras` (`fused.keras` for `acb` / `repvgg`: the plain convs that
the branches fuse into) and writes into `--run_dir/export/`:

- `saved_model/`: `model.export()` with the serving endpoint `serve`
  (float32 images with the test preprocessing in, logits out), reloaded
  with `tf.saved_model.load` and checked to give the Keras model's logits;
- `model_float.tflite`: the same model as float32 TFLite;
- `model_int8.tflite`: full-integer post-training quantization (every op
  int8), calibrated on `--representative_images` training images with the
  test preprocessing; with `--int8_io` its input and output are int8 too;
- `export.json`: the test top-1 of each (the SavedModel's by `serve`, the
  TFLite models' by the TFLite interpreter) and the int8 drop.

SGS leaves no trace in the exported model: it only scaled gradients
during training, so the exported graph is the plain conv net.

```sh
python3 examples/train_cifar.py --method=sgs_mi --output_dir=runs/sgs_mi
python3 examples/export.py --run_dir=runs/sgs_mi
```
"""

import os
import types

import keras
import numpy as np
import pipelines
import run_dir
import tensorflow as tf
from absl import app
from absl import flags
from train_flags import CONV_TYPES

flags.DEFINE_string("run_dir", None, "The --output_dir of a finished run.")
flags.DEFINE_integer(
    "representative_images",
    256,
    "Training images that calibrate the int8 quantization.",
    lower_bound=1,
)
flags.DEFINE_bool(
    "int8_io", False, "int8 input and output for the int8 TFLite model."
)
flags.DEFINE_integer(
    "eval_batch_size", 100, "Images per evaluation batch.", lower_bound=1
)
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS
# The largest |logit| difference accepted between the reloaded SavedModel
# and the Keras model (float32 rounding of a different kernel order).
SAVED_MODEL_TOLERANCE = 1e-3


def run_task(recorded):
    """The `pipelines.Task` of the script that made the run."""
    # Each script defines its flags on import: import only the one needed.
    values = recorded["flags"]
    if recorded["task"] == "cifar":
        import train_cifar

        # Runs recorded before --dataset and --head: CIFAR-10, linear.
        return train_cifar.make_task(
            values.get("dataset", "cifar10"), values.get("head", "linear")
        )
    import train_imagenet

    return train_imagenet.make_task(
        values["image_size"], values["label_offset"], None
    )


def load_run(path):
    """`(recorded flags, task, data, model, model file)` of the run in
    `path`; a `ValueError` when it is not a finished run."""
    for name in (run_dir.RUN_FLAGS, "results.json"):
        if not os.path.exists(os.path.join(path, name)):
            raise ValueError(
                f"--run_dir={path} is not a finished training run: it has "
                f"no {name}."
            )
    recorded = run_dir.read_json(
        os.path.join(path, run_dir.RUN_FLAGS), "train the run again."
    )
    task = run_task(recorded)
    config = types.SimpleNamespace(
        **recorded["flags"], **recorded["other_flags"]
    )
    data = pipelines.load_data(config, task)
    name = "fused.keras" if config.method in CONV_TYPES else "model.keras"
    model = keras.saving.load_model(os.path.join(path, name))
    return recorded, task, data, model, name


def batches(task, data, batch_size):
    """The test set as numpy `(images, labels)` batches."""
    dataset = pipelines.eval_dataset(data.test, task, batch_size)
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def representative_images(task, data, count):
    """A generator of `[image batch of 1]`: the first training images with
    the test preprocessing, for the int8 calibration."""
    dataset = pipelines.eval_dataset(data.train.take(count), task, 1)

    def generate():
        for images, _ in dataset:
            yield [images]

    return generate


def tflite_model(saved_model, representative=None, int8_io=False):
    """The TFLite flatbuffer of `saved_model`: float32, or full-integer
    int8 when a `representative` generator is given."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


def tflite_logits(flatbuffer, images):
    """Runs a TFLite model on a batch; quantizes an int8 input and
    dequantizes an int8 output."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    if source["dtype"] == np.int8:
        scale, zero = source["quantization"]
        images = np.clip(np.round(images / scale + zero), -128, 127)
    interpreter.set_tensor(source["index"], images.astype(source["dtype"]))
    interpreter.invoke()
    logits = interpreter.get_tensor(target["index"])
    if target["dtype"] == np.int8:
        scale, zero = target["quantization"]
        logits = (logits.astype(np.float32) - zero) * scale
    return logits


def top1(predict, test_batches):
    """Top-1 accuracy of `predict(images) -> logits` on the batches."""
    correct = total = 0
    for images, labels in test_batches:
        correct += int(np.sum(np.argmax(predict(images), -1) == labels))
        total += len(labels)
    return correct / total


def export(path, representative_count, int8_io, batch_size):
    """Writes `path/export/` and returns what `export.json` holds."""
    recorded, task, data, model, model_file = load_run(path)
    out = os.path.join(path, "export")
    os.makedirs(out, exist_ok=True)
    saved_model = os.path.join(out, "saved_model")
    model.export(saved_model, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(saved_model)  # keeps the variables
    serve = reloaded.serve
    test_batches = batches(task, data, batch_size)

    def keras_logits(images):
        return keras.ops.convert_to_numpy(model(images, training=False))

    images = test_batches[0][0]
    difference = float(
        np.max(np.abs(serve(images).numpy() - keras_logits(images)))
    )
    if difference > SAVED_MODEL_TOLERANCE:
        raise RuntimeError(
            f"The reloaded SavedModel's logits differ from the Keras "
            f"model's by {difference:.3g} (> {SAVED_MODEL_TOLERANCE})."
        )
    float_model = tflite_model(saved_model)
    int8_model = tflite_model(
        saved_model,
        representative_images(task, data, representative_count),
        int8_io,
    )
    for name, flatbuffer in [("float", float_model), ("int8", int8_model)]:
        with open(os.path.join(out, f"model_{name}.tflite"), "wb") as f:
            f.write(flatbuffer)
    accuracy = {
        "keras": top1(keras_logits, test_batches),
        "saved_model": top1(lambda x: serve(x).numpy(), test_batches),
        "tflite_float": top1(
            lambda x: tflite_logits(float_model, x), test_batches
        ),
        "tflite_int8": top1(
            lambda x: tflite_logits(int8_model, x), test_batches
        ),
    }
    report = {
        "run_dir": path,
        "method": recorded["flags"]["method"],
        "model_file": model_file,
        "test_examples": sum(len(y) for _, y in test_batches),
        "test_top1": accuracy,
        "int8_drop": accuracy["tflite_float"] - accuracy["tflite_int8"],
        "saved_model_max_logit_difference": difference,
        "representative_images": representative_count,
        "int8_io": int8_io,
        "tflite_bytes": {"float": len(float_model), "int8": len(int8_model)},
    }
    run_dir.write_json(os.path.join(out, "export.json"), report)
    return report


def main(argv):
    del argv
    report = export(
        FLAGS.run_dir,
        FLAGS.representative_images,
        FLAGS.int8_io,
        FLAGS.eval_batch_size,
    )
    accuracy = report["test_top1"]
    print(
        f"{report['method']}: test top-1 Keras {accuracy['keras']:.4f}, "
        f"SavedModel {accuracy['saved_model']:.4f}, TFLite float "
        f"{accuracy['tflite_float']:.4f}, int8 {accuracy['tflite_int8']:.4f}"
        f" -> {os.path.join(FLAGS.run_dir, 'export')}",
        flush=True,
    )


if __name__ == "__main__":
    app.run(main)

"""int8 post-training quantization: SGS against branched-then-fused models.

Branched reparameterization (RepVGG, ACNet) trains several parallel convs
and fuses them into one for inference; fused kernels are known to quantize
badly (RepVGG / RepOpt users and YOLOv6's quantization notes report large
int8 drops). SGS trains the plain conv directly. For each of `--methods`
this trains `examples/train_cifar.py` on the same recipe (or reuses a
finished run in `--runs_dir/<method>`), exports it with
`examples/export.py` (the fused model for `repvgg` / `acb`) to float32
and full-integer int8 TFLite (calibrated on 256 training images), and
tabulates the test top-1 of each and the int8 drop.

    KERAS_BACKEND=tensorflow python3 benchmarks/int8_ptq.py   # CPU: ~25 min
    # the paper's length, on a GPU machine with TensorFlow:
    python3 benchmarks/int8_ptq.py --epochs=200 --width=1 \
        --runs_dir=runs/int8_ptq_200
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from common import write_table

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "methods", ["baseline", "sgs_mi", "repvgg"], "train_cifar.py methods."
)
flags.DEFINE_string(
    "data", "../shared/data/cifar10/train-*", "Training TFRecords."
)
flags.DEFINE_string(
    "test_data", "../shared/data/cifar10/test-*", "Test TFRecords."
)
flags.DEFINE_string("model", "vgg11", "train_cifar.py --model.")
flags.DEFINE_float("width", 0.25, "train_cifar.py --width.")
flags.DEFINE_integer("epochs", 10, "train_cifar.py --epochs.")
flags.DEFINE_integer("seed", 0, "train_cifar.py --seed.")
flags.DEFINE_string(
    "runs_dir", "runs/int8_ptq", "Where each method's run is kept."
)
flags.DEFINE_string(
    "output", "benchmarks/results/int8_ptq.md", "The table's file."
)

EXAMPLES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "examples"
)


def run(script, *args):
    """Runs `examples/<script>`; stops with its output if it fails."""
    command = [sys.executable, os.path.join(EXAMPLES, script), *args]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode:
        sys.exit(
            f"{' '.join(command)} failed:\n"
            + (process.stdout + process.stderr)[-4000:]
        )
    print(process.stdout.strip().splitlines()[-1], flush=True)


def train_and_export(method):
    """`export.json` of `method`'s run (trained unless finished)."""
    run_dir = os.path.join(FLAGS.runs_dir, method)
    run(
        "train_cifar.py",
        f"--method={method}",
        f"--model={FLAGS.model}",
        f"--width={FLAGS.width}",
        f"--epochs={FLAGS.epochs}",
        f"--seed={FLAGS.seed}",
        f"--data={FLAGS.data}",
        f"--test_data={FLAGS.test_data}",
        "--verbose=2",
        f"--output_dir={run_dir}",
    )
    run("export.py", f"--run_dir={run_dir}")
    with open(os.path.join(run_dir, "export", "export.json")) as f:
        return json.load(f)


def table(reports):
    rows = [
        f"{FLAGS.model} (width {FLAGS.width}), {FLAGS.epochs} epochs, full "
        "CIFAR-10, seed "
        f"{FLAGS.seed}; int8: full-integer post-training quantization "
        "(TFLite, 256 calibration images); top-1 on the 10,000 test images.",
        "",
        "| method | exported model | Keras (%) | TFLite float (%) | "
        "TFLite int8 (%) | int8 drop (points) | int8 size (KB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in reports.items():
        top1 = r["test_top1"]
        rows.append(
            f"| {method} | {r['model_file']} | {100 * top1['keras']:.2f} | "
            f"{100 * top1['tflite_float']:.2f} | "
            f"{100 * top1['tflite_int8']:.2f} | "
            f"{100 * r['int8_drop']:.2f} | "
            f"{r['tflite_bytes']['int8'] / 1024:.0f} |"
        )
    return "\n".join(rows)


def main(argv):
    del argv
    reports = {method: train_and_export(method) for method in FLAGS.methods}
    write_table(FLAGS.output, table(reports))


if __name__ == "__main__":
    app.run(main)

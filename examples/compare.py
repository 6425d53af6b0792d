r"""Baseline against SGS-MI on the shipped CIFAR-10 sample, in minutes on a CPU.

Trains each of --methods (default `baseline,sgs_mi`) one after the other
with `train_cifar.py`'s code and flags, on a small VGG-11 (width 0.25) for
30 epochs on `data/cifar10_sample` (4000 training / 1000 test images),
and prints a table of test accuracy, seconds per epoch and seconds spent
in MI refreshes. The demo refreshes the SGS masks every epoch after the
warm-up epoch (the authors' recipe: every 5), so the short run refreshes
them many times. Each method's outputs go to `--output_dir/<method>/`;
`--output_dir` gets the combined `results.json` and the SGS-MI run's
`masks.png`.

```sh
python3 examples/compare.py                      # runs/compare
python3 examples/compare.py --epochs=60 --width=0.5 \
    --methods=baseline,sgs_mi,acb
```

Every `train_cifar.py` flag applies (see `--helpfull`); `--method` is
replaced by `--methods`. A small sample and a short schedule give noisy
accuracies: the comparison shows the mechanics and their cost, not the
paper's gain.
"""

import os
import shutil
import types

import run_dir
import train_cifar
import train_flags
import training
from absl import app
from absl import flags

flags.DEFINE_list(
    "methods",
    ["baseline", "sgs_mi"],
    f"Methods to train, in order, from {', '.join(train_flags.METHODS)}.",
)
flags.register_validator(
    "methods",
    lambda methods: methods and set(methods) <= set(train_flags.METHODS),
    f"--methods must list some of {', '.join(train_flags.METHODS)}.",
)
DEMO_DEFAULTS = {
    "model": "vgg11",
    "width": 0.25,
    "epochs": 30,
    "refresh_every": 1,
    "verbose": 2,
    "output_dir": str(training.REPO / "runs" / "compare"),
}
flags.adopt_module_key_flags(train_cifar)
FLAGS = flags.FLAGS
for _name, _value in DEMO_DEFAULTS.items():
    FLAGS.set_default(_name, _value)


def train_method(method):
    """Trains one method with the flags' settings; returns its results."""
    config = types.SimpleNamespace(
        **{
            **FLAGS.flag_values_dict(),
            "method": method,
            "output_dir": os.path.join(FLAGS.output_dir, method),
        }
    )
    return training.train(config, train_cifar.task_from_flags(config))


def table(results):
    """A markdown table: one row per method."""
    rows = [
        "| method | test accuracy | s/epoch | MI refreshes | MI refresh s |",
        "|---|---|---|---|---|",
    ]
    for method, r in results.items():
        rows.append(
            f"| {method} | {r['test_accuracy']:.4f} | "
            f"{r['seconds_per_epoch']:.2f} | {r['sgs_refreshes']} | "
            f"{r['sgs_refresh_seconds']:.2f} |"
        )
    return "\n".join(rows)


def main(argv):
    del argv
    # One comparison at a time in --output_dir (each method's run also
    # holds its own folder).
    with run_dir.locked(FLAGS.output_dir):
        compare()


def compare():
    """Trains every method, prints the table, writes the combined
    results."""
    print(
        f"{FLAGS.model} (width {FLAGS.width}), {FLAGS.epochs} epochs on "
        f"{FLAGS.data or FLAGS.tfds_name or train_cifar.SAMPLE}; SGS-MI "
        f"refreshes the masks every {FLAGS.refresh_every} epoch(s) from "
        f"epoch {FLAGS.refresh_warmup + 1} on.",
        flush=True,
    )
    results = {method: train_method(method) for method in FLAGS.methods}
    print(table(results))
    run_dir.write_json(os.path.join(FLAGS.output_dir, "results.json"), results)
    if "sgs_mi" in results:
        shutil.copy(
            os.path.join(FLAGS.output_dir, "sgs_mi", "masks.png"),
            FLAGS.output_dir,
        )
    print(f"Wrote {FLAGS.output_dir}/results.json", flush=True)


if __name__ == "__main__":
    app.run(main)

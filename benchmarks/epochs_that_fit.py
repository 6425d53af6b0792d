r"""How many epochs of an accuracy study fit in the seconds left, measured
from a short calibration run of the same study.

`benchmarks/gpu_run_cifar100.sh` first runs `accuracy.py` for a few epochs
with the settings of the study (same runs, same `--parallel`), timing the
whole command; this prints the number of epochs of the real study that
fit in `--seconds`: its fixed cost (start, data, compilation, evaluation:
the calibration's seconds less its steady epochs) plus that many steady
epochs (the slowest run's last epoch, MI refresh excluded). No Keras, no
TensorFlow: it reads the runs' JSON files only.

```sh
python3 benchmarks/epochs_that_fit.py --runs=/tmp/calibration/accuracy \
    --calibration_seconds=48 --seconds=450 --max_epochs=200
```
"""

import glob
import json
import math
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "Folder of the calibration's run JSONs.")
flags.DEFINE_float(
    "calibration_seconds", None, "Wall seconds of the calibration command."
)
flags.DEFINE_float("seconds", None, "Seconds left for the study.")
flags.DEFINE_integer("max_epochs", 200, "At most this many epochs.")
flags.DEFINE_float(
    "margin", 0.05, "Fraction of the steady time kept in reserve."
)
flags.mark_flags_as_required(["runs", "calibration_seconds", "seconds"])


def epochs_that_fit(
    runs, calibration_seconds, seconds, max_epochs, margin=0.05
):
    """The epochs of the study that fit in `seconds`, between 1 and
    `max_epochs`.

    Args:
        runs: list of the calibration's run dicts (`accuracy.py`'s JSON),
            each with `epoch_seconds` (at least 2 epochs: the first one
            compiles).
        calibration_seconds: float. Wall seconds of the whole calibration.
        seconds: float. Seconds the study may take.
        max_epochs: int. Upper bound (the recipe's epochs).
        margin: float. Fraction of the steady epochs' time kept in reserve.

    Returns:
        int.

    Raises:
        ValueError: no run, or a run with fewer than 2 epochs.
    """
    finished = [len(r["epoch_seconds"]) for r in runs]
    if not runs or min(finished) < 2:
        raise ValueError(
            "The calibration must finish at least 2 epochs in every run. "
            f"Received: epochs per run {finished}"
        )
    steady = max(r["epoch_seconds"][-1] for r in runs)
    epochs = len(runs[0]["epoch_seconds"])
    fixed = max(calibration_seconds - epochs * steady, 0.0)
    fit = math.floor((seconds - fixed) * (1 - margin) / steady)
    return max(1, min(max_epochs, fit))


def main(argv):
    del argv
    runs = []
    for path in sorted(glob.glob(os.path.join(FLAGS.runs, "*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    print(
        epochs_that_fit(
            runs,
            FLAGS.calibration_seconds,
            FLAGS.seconds,
            FLAGS.max_epochs,
            FLAGS.margin,
        )
    )


if __name__ == "__main__":
    app.run(main)

r"""The paper's CIFAR-10 and CIFAR-100 comparisons with keras_sgs, on
TensorFlow, JAX, PyTorch.

Trains each of `--methods` once per seed of `--seeds` and writes one JSON
per run and a markdown table (test top-1 mean +- std over seeds and its
difference to the baseline, seconds per epoch and their ratio to the
baseline's, seconds in MI refreshes) beside the reference: the paper's
CIFAR-100 figures, or for CIFAR-10 those measured with the authors' own
PyTorch code. The defaults are the authors' CIFAR-100 recipe, for CIFAR-10
too: `keras_sgs.recipes` (the recipe, its source and what each method
builds), with the augmentation drawn per image on the device and SGS-MI's
held-out images the first training images, without augmentation (their
CIFAR-10 config differs: docs/results.md, "Faithfulness").

- `baseline`: plain convs; `sgs_mi`: masks from `MIScalingCallback`;
  `sgs_constant`: ACNet's fixed 3x3+1x3+3x1 mask; `acb` / `repvgg`: the
  branched models of `keras_sgs.reparam`, also evaluated after
  `fuse_model`. Every method trains with `SGSWrapper(SGD)`, whose masks
  stay at ones for `baseline`, `acb` and `repvgg` (exactly SGD with the
  coupled decay).
- Data: `--dataset` (cifar10 or cifar100) sets the classes, the
  normalization and the default data (`../shared/data/<dataset>`):
  TFRecord globs (`--data`, `--test_data`; JPEG or PNG, the fine labels
  of CIFAR-100) read without TensorFlow, or the compact
  `<dataset>_jpeg.npz` of `../shared/tools/gpu-wheels.sh --data`
  (`--data=.gpu-data/cifar100_jpeg.npz`, holds both splits). Labels that
  do not fit the data set are refused before training. TensorFlow is
  imported only on the TensorFlow backend.
- Runs of one seed are started next to each other, so that with
  `--parallel` the methods share the device under the same load.
- `--parallel N` trains N runs at once, each in its own process (one GPU
  shared by small models); JAX processes then allocate GPU memory as they
  need it (`XLA_PYTHON_CLIENT_PREALLOCATE=false`).

```sh
KERAS_BACKEND=jax python3 benchmarks/accuracy.py --epochs=60 --parallel=6
KERAS_BACKEND=jax python3 benchmarks/accuracy.py --dataset=cifar100 \
    --data=.gpu-data/cifar100_jpeg.npz --epochs=200 --parallel=6
KERAS_BACKEND=tensorflow python3 benchmarks/accuracy.py --epochs=1 \
    --train_images=512 --width=0.25 --output=/tmp/accuracy.md   # smoke
```
"""

import json
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import cifar  # noqa: E402
import keras  # noqa: E402  (after the JAX setting above)
import numpy as np  # noqa: E402
import paired  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from common import command_line  # noqa: E402
from common import device_description  # noqa: E402

import keras_sgs  # noqa: E402
from keras_sgs import recipes  # noqa: E402
from keras_sgs.plotting import model_masks  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODELS = ("vgg11", "vgg16", "resnet18")
# The study's default epochs per data set: the CIFAR-10 study's 60, the
# authors' 200 for CIFAR-100.
DEFAULT_EPOCHS = {"cifar10": 60, "cifar100": recipes.CIFAR.epochs}
METHODS = tuple(recipes.METHODS)
# The branched methods, evaluated after fusion too.
BRANCHED = tuple(m for m, s in recipes.METHODS.items() if s.branched)
# (dataset, model, epochs) -> (source, seeds, baseline, SGS), from
# ../shared/docs/method.md: CIFAR-10 measured with the authors' PyTorch code
# on the same TFRecords (VGG-11-BN, one H100); CIFAR-100 the paper's
# (authors' README) 200-epoch figures.
REFERENCE = {
    ("cifar10", "vgg11", 30): (
        "authors' code, one H100",
        2,
        "87.50 (87.52, 87.48)",
        "87.39 (86.95, 87.83)",
    ),
    ("cifar10", "vgg11", 60): (
        "authors' code, one H100",
        3,
        "89.06 ± 0.18",
        "89.27 ± 0.14",
    ),
    ("cifar100", "vgg11", 200): ("paper", "", "70.8 ± 0.1", "73.2 ± 0.1"),
    ("cifar100", "vgg16", 200): ("paper", "", "74.9 ± 0.1", "76.2 ± 0.1"),
    ("cifar100", "resnet18", 200): ("paper", "", "77.8 ± 0.1", "78.8 ± 0.1"),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dataset",
    "cifar10",
    tuple(recipes.DATASETS),
    "Sets the classes, the normalization, the default --data, --head and "
    "--epochs.",
)
flags.DEFINE_enum("model", "vgg11", MODELS, "Architecture.")
flags.DEFINE_enum(
    "head",
    None,
    keras_sgs.models.HEADS,
    "The VGG classifier (keras_sgs.models.build_model). Defaults to the "
    "authors' model: linear for cifar10, mlp for cifar100.",
)
flags.DEFINE_list(
    "methods", ["baseline", "sgs_mi"], f"Any of {', '.join(METHODS)}."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "One run per method per seed.")
flags.DEFINE_integer(
    "epochs",
    None,
    "Training epochs. Defaults to 60 for cifar10 (the CIFAR-10 study) and "
    "the authors' 200 for cifar100.",
    lower_bound=1,
)
flags.DEFINE_float("width", 1.0, "Channel multiplier of the model.")
flags.DEFINE_integer(
    "train_images",
    None,
    "Train on the first N images only (smoke runs).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "test_images",
    None,
    "Evaluate on the first N test images only.",
    lower_bound=1,
)
flags.DEFINE_string(
    "data",
    None,
    "Training images: a TFRecord glob, or a compact .npz (both splits). "
    "Defaults to ../shared/data/<dataset>/train-*.tfrecord.",
)
flags.DEFINE_string(
    "test_data",
    None,
    "Test images: a TFRecord glob (ignored when --data is a .npz). "
    "Defaults to ../shared/data/<dataset>/test-*.tfrecord.",
)
_RECIPE = recipes.CIFAR
flags.DEFINE_integer(
    "batch_size", _RECIPE.batch_size, "Batch size.", lower_bound=1
)
flags.DEFINE_float(
    "lr", _RECIPE.learning_rate, "Learning rate, cosine-decayed to 0."
)
flags.DEFINE_float(
    "weight_decay", _RECIPE.weight_decay, "Coupled weight decay."
)
flags.DEFINE_integer(
    "refresh_every", _RECIPE.refresh_every, "SGS-MI: epochs between refreshes."
)
flags.DEFINE_integer(
    "refresh_warmup", _RECIPE.refresh_warmup, "SGS-MI: first refreshing epoch."
)
flags.DEFINE_integer(
    "refresh_batches", _RECIPE.refresh_batches, "SGS-MI: held-out batches."
)
flags.DEFINE_float("mi_k", _RECIPE.mi_k, "SGS-MI: sharpening k.")
flags.DEFINE_integer(
    "parallel",
    1,
    "Runs trained at once, each in its own process.",
    lower_bound=1,
)
flags.DEFINE_integer("verbose", 0, "Keras verbosity of each run (0, 1, 2).")
flags.DEFINE_bool(
    "retabulate",
    False,
    "Train nothing: write --output's table again from the finished runs' "
    "JSON files in its folder (e.g. after a change to the table), under "
    "the commands that trained them.",
)
flags.DEFINE_string(
    "output",
    str(REPO / "benchmarks" / "results" / "accuracy.md"),
    "Markdown table; the runs' JSON files go to the folder of the same "
    "name without `.md`.",
)


def main(argv):
    del argv
    if FLAGS.retabulate:
        retabulate(FLAGS.output)
        return
    methods, seeds = check_flags()
    FLAGS.head = FLAGS.head or recipes.DATASETS[FLAGS.dataset].head
    FLAGS.epochs = FLAGS.epochs or DEFAULT_EPOCHS[FLAGS.dataset]
    shared = SHARED_DATA / FLAGS.dataset
    data = FLAGS.data or str(shared / "train-*.tfrecord")
    test_data = FLAGS.test_data or str(shared / "test-*.tfrecord")
    train_images, train_labels = load("train", data, FLAGS.train_images)
    test_source = data if data.endswith(".npz") else test_data
    test_images, test_labels = load("test", test_source, FLAGS.test_images)
    runs_dir = pathlib.Path(FLAGS.output).with_suffix("")
    runs_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        name: getattr(FLAGS, name)
        for name in (
            "dataset",
            "model",
            "head",
            "epochs",
            "width",
            "batch_size",
            "lr",
            "weight_decay",
            "refresh_every",
            "refresh_warmup",
            "refresh_batches",
            "mi_k",
            "verbose",
        )
    }
    print(
        f"{FLAGS.dataset}: {FLAGS.model} ({FLAGS.head} head, width "
        f"{FLAGS.width}), {FLAGS.epochs} epochs, "
        f"{len(train_images)} training / {len(test_images)} test images, "
        f"{len(methods) * len(seeds)} runs, {FLAGS.parallel} at a time.",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as data_dir:
        arrays = {
            "train_images": train_images,
            "train_labels": train_labels,
            "test_images": test_images,
            "test_labels": test_labels,
        }
        for name, array in arrays.items():
            np.save(os.path.join(data_dir, f"{name}.npy"), array)
        command = command_line()
        jobs = [
            dict(
                settings,
                method=method,
                seed=seed,
                command=command,
                data_dir=data_dir,
                json_path=str(
                    runs_dir / f"{FLAGS.model}_{method}_seed{seed}.json"
                ),
            )
            for seed in seeds
            for method in methods
        ]
        context = multiprocessing.get_context("spawn")
        with context.Pool(FLAGS.parallel, maxtasksperchild=1) as pool:
            results = []
            for result in pool.imap_unordered(train_run, jobs):
                print(run_line(result), flush=True)
                results.append(result)
    del results  # the table holds every finished run of the folder
    write_study_table(FLAGS.output)


def retabulate(output):
    """Writes `output`'s table again from the finished runs in its folder,
    under the commands that trained them."""
    again = " ".join(["python3", os.path.relpath(sys.argv[0])] + sys.argv[1:])
    write_study_table(output, tabulated_by=f"Tabulated again by `{again}`.")


# Settings every run of one table shares (runs of a study may come from
# several commands, e.g. more seeds later).
SHARED_SETTINGS = (
    "dataset",
    "model",
    "head",
    "epochs",
    "width",
    "train_images",
    "test_images",
)


def finished_runs(runs_dir):
    """The finished runs' dicts in `runs_dir`, after checking that they
    share `SHARED_SETTINGS`; an `app.UsageError` when there is none, or
    when one differs (naming its file)."""
    results, first_path = [], None
    for path in sorted(pathlib.Path(runs_dir).glob("*.json")):
        with open(path) as f:
            run = json.load(f)
        if not run.get("finished"):
            continue
        # Runs written before CIFAR-100 and `--head` were CIFAR-10 runs
        # with the linear classifier.
        run.setdefault("dataset", "cifar10")
        run.setdefault("head", "linear")
        if results:
            differ = [
                f"{key}={run.get(key)!r} (not {results[0].get(key)!r})"
                for key in SHARED_SETTINGS
                if run.get(key) != results[0].get(key)
            ]
            if differ:
                raise app.UsageError(
                    f"{path.name} is not a run of the study in {runs_dir} "
                    f"(as {first_path.name} is): {', '.join(differ)}. "
                    "Write each setting's runs to their own --output."
                )
        else:
            first_path = path
        results.append(run)
    if not results:
        raise app.UsageError(f"{runs_dir} holds no finished run.")
    return results


def write_study_table(output, tabulated_by=None):
    """Writes `output`: the commands that trained the runs (those already
    at the top of `output`, then those the runs' files name), `tabulated_by`,
    and the table of every finished run in `output`'s folder.

    Each run's file names its command, so a run trained into another
    checkout's folder and copied here brings its command with it."""
    results = finished_runs(pathlib.Path(output).with_suffix(""))
    commands = []
    if os.path.exists(output):
        for line in pathlib.Path(output).read_text().splitlines():
            if not line.startswith("Command: "):
                break
            commands.append(line)
    for run in results:
        # Runs written before 2026-12-07 do not name their command.
        if run.get("command") and run["command"] not in commands:
            commands.append(run["command"])
    first = results[0]
    text = table(results, first["train_images"], first["test_images"])
    header = commands + ([tabulated_by] if tabulated_by else [])
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        f.write("\n".join(header) + f"\n\n{text}\n")
    print(text)


def check_flags():
    """The methods and seeds, or a `app.UsageError` before any training."""
    methods = FLAGS.methods
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise app.UsageError(
            f"--methods must list some of {', '.join(METHODS)}. Received: "
            f"--methods={','.join(methods)}"
        )
    try:
        seeds = [int(seed) for seed in FLAGS.seeds]
    except ValueError:
        seeds = []
    if not seeds:
        raise app.UsageError(
            "--seeds must list integers. Received: "
            f"--seeds={','.join(FLAGS.seeds)}"
        )
    runs = len(methods) * len(seeds)
    if FLAGS.parallel > runs:
        raise app.UsageError(
            f"--parallel must be at most the number of runs ({runs}: "
            f"{len(methods)} methods x {len(seeds)} seeds). Received: "
            f"--parallel={FLAGS.parallel}"
        )
    if not FLAGS.width > 0:
        raise app.UsageError(
            f"--width must be > 0. Received: --width={FLAGS.width}"
        )
    return methods, seeds


def load(split, source, limit):
    """`cifar.load_split` and `recipes.check_labels`, with bad data reported
    as a usage error."""
    try:
        images, labels = cifar.load_split(source, split, limit)
    except (ValueError, OSError) as error:
        raise app.UsageError(
            f"Cannot read the {split} images: {error}"
        ) from None
    try:
        recipes.check_labels(labels, FLAGS.dataset, source)
    except ValueError as error:
        raise app.UsageError(
            f"The {split} labels do not fit --dataset={FLAGS.dataset}: {error}"
        ) from None
    return images, labels


# -- one run, in its own process ----------------------------------------------


def train_run(job):
    """Trains and evaluates one method with one seed; writes and returns the
    run's results (a dict). The JSON file is written after every epoch too
    (`"finished": false`), so that a run cut short leaves its progress."""
    start = time.perf_counter()
    keras.utils.set_random_seed(job["seed"])
    data = {
        name: np.load(os.path.join(job["data_dir"], f"{name}.npy"))
        for name in (
            "train_images",
            "train_labels",
            "test_images",
            "test_labels",
        )
    }
    method = job["method"]
    dataset = job["dataset"]
    backbone, model, optimizer, callbacks = cifar.build_run(
        job, data["train_images"], len(data["train_labels"])
    )
    compile_for_accuracy(model, optimizer)
    results = {
        "dataset": dataset,
        "model": job["model"],
        "head": job["head"],
        "num_classes": recipes.DATASETS[dataset].num_classes,
        "method": method,
        "seed": job["seed"],
        "epochs": job["epochs"],
        "width": job["width"],
        "train_images": len(data["train_labels"]),
        "test_images": len(data["test_labels"]),
        "device": device_description(),
        "command": job["command"],
        "finished": False,
    }
    run_log = RunLog(results, job["json_path"])
    callbacks.append(run_log)  # after the refresh: epoch times leave it out
    model.fit(
        data["train_images"],
        data["train_labels"],
        batch_size=job["batch_size"],
        epochs=job["epochs"],
        shuffle=True,
        callbacks=callbacks,
        verbose=job["verbose"],
    )
    test = (data["test_images"], data["test_labels"])
    results["test_top1"] = evaluate(model, *test)
    if method in BRANCHED:
        fused = cifar.inference_model(
            keras_sgs.reparam.fuse_model(backbone), dataset
        )
        compile_for_accuracy(fused, "sgd")
        results["fused_test_top1"] = evaluate(fused, *test)
    if recipes.METHODS[method].scales_gradients:
        results["masks"] = {
            name: mask.tolist() for name, mask in model_masks(model).items()
        }
    results["wall_seconds"] = time.perf_counter() - start
    results["finished"] = True
    write_json(results, job["json_path"])
    return results


def write_json(results, path):
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


def compile_for_accuracy(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def evaluate(model, images, labels):
    """Top-1 accuracy in [0, 1]."""
    logs = model.evaluate(
        images, labels, batch_size=500, verbose=0, return_dict=True
    )
    return float(logs["accuracy"])


class RunLog(keras.callbacks.Callback):
    """Adds each epoch's seconds (start to end), loss, accuracy and MI
    refresh seconds to `results` and writes them to `path`."""

    def __init__(self, results, path):
        super().__init__()
        self.results = results
        self.path = path
        for key in (
            "train_loss",
            "train_top1",
            "epoch_seconds",
            "mi_refresh_seconds",
        ):
            results[key] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        r = self.results
        r["epoch_seconds"].append(time.perf_counter() - self._start)
        r["seconds_per_epoch"] = statistics.median(r["epoch_seconds"])
        r["train_loss"].append(float(logs["loss"]))
        r["train_top1"].append(float(logs["accuracy"]))
        # Each refresh's seconds, in order; the first one compiles.
        if logs.get("sgs_refresh_seconds"):
            r["mi_refresh_seconds"].append(float(logs["sgs_refresh_seconds"]))
        write_json(r, self.path)


# -- the table ---------------------------------------------------------------


def mean_std(values):
    """`"mean ± std"` in percent (sample std; the value alone for one)."""
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def run_line(r):
    line = (
        f"{r['model']} {r['method']} seed {r['seed']}: test top-1 "
        f"{100 * r['test_top1']:.2f}"
    )
    if "fused_test_top1" in r:
        line += f" (fused {100 * r['fused_test_top1']:.2f})"
    return line + (
        f", {r['seconds_per_epoch']:.2f} s/epoch, "
        f"{len(r['mi_refresh_seconds'])} MI refreshes in "
        f"{sum(r['mi_refresh_seconds']):.1f} s, "
        f"{r['wall_seconds']:.0f} s in all"
    )


def refresh_columns(runs):
    """`(first, warm, warm / epoch)` cells: the first refresh of a run
    (it compiles) and the median of the later ones, over all runs."""
    first = [
        r["mi_refresh_seconds"][0] for r in runs if r["mi_refresh_seconds"]
    ]
    warm = [s for r in runs for s in r["mi_refresh_seconds"][1:]]
    if not first:
        return "", "", ""
    epoch = statistics.median(r["seconds_per_epoch"] for r in runs)
    if not warm:
        return f"{statistics.median(first):.2f}", "", ""
    warm = statistics.median(warm)
    return (
        f"{statistics.median(first):.2f}",
        f"{warm:.2f}",
        f"{100 * warm / epoch:.1f}%",
    )


def ratio_to_baseline(runs, baseline_runs, key):
    """The median of `key` over `runs` against the baseline's; "" without
    a baseline or for the baseline itself."""
    if not baseline_runs or runs is baseline_runs:
        return ""
    median = statistics.median(r[key] for r in runs)
    return f"{median / statistics.median(r[key] for r in baseline_runs):.3f}"


# The paired comparisons of the table, where both methods have runs:
# every method against the baseline, SGS-MI against the branched models,
# ACNet's mask alone against the ACNet branches with their BatchNorm (the
# theorem's pair), and learned masks against that fixed one.
CONTRASTS = [(m, "baseline") for m in METHODS[1:]] + [
    ("sgs_mi", "acb"),
    ("sgs_mi", "repvgg"),
    ("sgs_constant", "acb"),
    ("sgs_mi", "sgs_constant"),
]


def deployed_top1(run):
    """The test top-1 of the model one deploys: fused for the branched
    methods, as trained for the others."""
    return run.get("fused_test_top1", run["test_top1"])


def paired_lines(by_method):
    """Markdown rows of the paired comparisons (`CONTRASTS`) of
    `by_method` (method -> its runs), in points of deployed top-1."""
    lines = []
    for method, reference in CONTRASTS:
        if method not in by_method or reference not in by_method:
            continue
        values, base = (
            {r["seed"]: 100 * deployed_top1(r) for r in by_method[m]}
            for m in (method, reference)
        )
        d = paired.paired_difference(values, base)
        if d is None:
            continue
        seeds = ", ".join(
            f"{diff:+.2f} ({seed})"
            for seed, diff in zip(d["seeds"], d["differences"])
        )
        spread = "" if d["std"] is None else f"{d['std']:.2f}"
        interval = (
            "" if d["low"] is None else f"[{d['low']:+.2f}, {d['high']:+.2f}]"
        )
        lines.append(
            f"| {method} - {reference} | {len(d['seeds'])} | {seeds} | "
            f"{d['mean']:+.2f} | {spread} | {interval} |"
        )
    if not lines:
        return []
    return [
        "",
        "Paired by seed (a seed's runs share their data order and "
        "augmentation, and their initial weights where the models match), "
        "deployed top-1 (fused for acb and repvgg), points:",
        "",
        "| comparison | pairs | difference per seed (seed) | mean "
        "| std | 95% interval (Student t) |",
        "|---|---|---|---|---|---|",
        *lines,
    ]


def reference_lines(dataset, model, epochs, width):
    """Table rows of the reference for these settings, or a note with the
    data set's references when none is for them."""
    reference = REFERENCE.get((dataset, model, epochs))
    if reference and width == 1.0:
        source, seeds, baseline, sgs = reference
        blanks = " |" * 9
        return [
            f"| {source}: baseline | {seeds} | {baseline} |{blanks}",
            f"| {source}: SGS | {seeds} | {sgs} |{blanks}",
        ]
    notes = [
        f"{m} ({e} epochs, {source}): baseline {baseline}, SGS {sgs}"
        for (d, m, e), (source, _, baseline, sgs) in REFERENCE.items()
        if d == dataset
    ]
    return ["", f"Reference (width 1): {'; '.join(notes)}."]


def mask_pattern(runs):
    """A line on the learned 3x3 masks of `runs` against the paper's
    figure (centre largest, the cross above the corners), with their mean
    over layers and runs; "" without 3x3 masks."""
    masks = np.array(
        [
            mask
            for r in runs
            for mask in r.get("masks", {}).values()
            if np.shape(mask) == (3, 3)
        ]
    )
    if not len(masks):
        return ""
    flat = masks.reshape(len(masks), 9)
    cross = flat[:, [1, 3, 5, 7]]
    corners = flat[:, [0, 2, 6, 8]]
    centre_largest = int(np.sum(flat.argmax(axis=1) == 4))
    cross_above = int(np.sum(cross.min(axis=1) > corners.max(axis=1)))
    mean = np.round(masks.mean(axis=0), 2).tolist()
    return (
        f"Learned 3x3 masks ({len(masks)}: layers x runs): centre largest "
        f"in {centre_largest}, every cross value above every corner in "
        f"{cross_above}; mean mask {mean}."
    )


def table(results, train_images, test_images):
    """The markdown table of `results` (one dict per run): each method's
    mean, spread and per-seed top-1, then the paired comparisons."""
    by_method = {}
    for r in sorted(
        results, key=lambda r: (METHODS.index(r["method"]), r["seed"])
    ):
        by_method.setdefault(r["method"], []).append(r)
    first = results[0]
    devices = sorted({r["device"] for r in results})
    baseline_runs = by_method.get("baseline")
    lines = [
        f"Device: {'; '.join(devices)}. {first['model']} ({first['head']} "
        f"head, width {first['width']}), {first['epochs']} epochs, "
        f"{train_images} training / {test_images} test images of "
        f"{first['dataset']}; the authors' recipe (keras_sgs.recipes).",
        "",
        "| method | seeds | test top-1 (%) | per seed (seed) "
        "| fused top-1 (%) | s/epoch | s/epoch vs baseline "
        "| MI refreshes per run | first refresh (s) | warm refresh (s) "
        "| warm refresh / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in by_method.items():
        fused = (
            mean_std([r["fused_test_top1"] for r in runs])
            if method in BRANCHED
            else ""
        )
        per_seed = ", ".join(
            f"{100 * r['test_top1']:.2f} ({r['seed']})" for r in runs
        )
        first_refresh, warm, share = refresh_columns(runs)
        seconds = statistics.median(r["seconds_per_epoch"] for r in runs)
        lines.append(
            f"| {method} | {len(runs)} | "
            f"{mean_std([r['test_top1'] for r in runs])} | {per_seed} | "
            f"{fused} | {seconds:.2f} | "
            f"{ratio_to_baseline(runs, baseline_runs, 'seconds_per_epoch')}"
            f" | {len(runs[0]['mi_refresh_seconds'])} | {first_refresh} | "
            f"{warm} | {share} |"
        )
    lines += reference_lines(
        first["dataset"], first["model"], first["epochs"], first["width"]
    )
    lines += paired_lines(by_method)
    pattern = mask_pattern(by_method.get("sgs_mi", []))
    return "\n".join(lines + (["", pattern] if pattern else []))


if __name__ == "__main__":
    app.run(main)

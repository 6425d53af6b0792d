"""Cost of one SGS-MI refresh: keras_sgs against the authors' way.

For a CIFAR VGG-16 (BN) and ResNet-18 (`keras_sgs.models`) and 256 real
CIFAR-10 images, times
one whole refresh (forward pass capturing every scaled conv's input, plus
the estimator for every layer):

- keras_sgs: `MIScalingCallback.refresh()` (compiled capture and the
  vectorised `spatial_dependence`), median of warm runs; the first call,
  which compiles, is reported apart;
- the authors' way: the same forward pass, the maps copied to the host,
  zero-padded as the layer pads them (strided convs are "valid" after a
  `ZeroPadding2D`), then a Python loop over channels and displacements calling
  `fast_histogram.histogram2d` on the float32 maps (as in the authors'
  `dependence.py`), the range's upper end `max + 1e-12` computed in float64
  so that a channel's maximum stays in its last bin (method.md).

The masks of both must agree to 1e-5. Peak memory is the peak resident
set during a phase above the resident set at its start (Linux: the peak is
reset through /proc/self/clear_refs), for the first keras_sgs refresh
(compilation included) and for the authors' way.

A second table times `spatial_dependence` alone on an ImageNet-sized map
(256 x 58 x 58 x 64, ReLU of Gaussian noise), against the authors' way, with
its peak extra memory: the target is at most about twice the map.

A third table is the first refresh on `keras.applications` models nobody
here wrote (`weights=None`, 32x32 inputs, 256 images), each in a new
process so that nothing is compiled yet, against the warm refresh: the
target is a first refresh of at most 3x the warm one plus 5 s.

    KERAS_BACKEND=tensorflow python benchmarks/mi_refresh.py
"""

import multiprocessing
import os
import statistics
import tempfile
import time

import keras
import numpy as np
from absl import app
from absl import flags
from common import cifar10_images
from common import device_description
from common import write_table

import keras_sgs

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data",
    "../shared/data/cifar10/train-00000-of-00008.tfrecord",
    "Real images: TFRecords or the compact .npz.",
)
flags.DEFINE_integer("images", 256, "Held-out images per refresh.")
flags.DEFINE_integer("repeats", 3, "Warm keras_sgs refreshes to time.")
flags.DEFINE_bool(
    "imagenet_map", True, "Also time the estimator on an ImageNet-sized map."
)
flags.DEFINE_list(
    "applications",
    ["MobileNetV2", "EfficientNetB0", "NASNetMobile", "ConvNeXtTiny"],
    "keras.applications models for the first-refresh table (empty: none).",
)
flags.DEFINE_string(
    "compare_backend",
    "torch",
    "Also time the warm refresh of the keras.applications models on this "
    "Keras backend, same weights and images (empty: no).",
)
flags.DEFINE_string(
    "output", "benchmarks/results/mi_refresh.md", "Markdown table path."
)


def authors_dependence(fmap, kernel_size, padding, k=5.0):
    """Per channel, per displacement, with fast_histogram (host)."""
    from fast_histogram import histogram2d

    kh, kw = kernel_size
    if padding == "same":
        fmap = np.pad(
            fmap, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)]
        )
    _, height, width, channels = fmap.shape
    result = np.ones((channels, kh, kw))
    done = set()
    for dy in range(-(kh // 2), kh // 2 + 1):
        for dx in range(-(kw // 2), kw // 2 + 1):
            if (dy, dx) == (0, 0) or (-dy, -dx) in done:
                continue
            done.add((dy, dx))
            cy, cx = max(0, -dy), max(0, -dx)
            ny, nx = cy + dy, cx + dx
            for c in range(channels):
                x = fmap[:, cy : height - ny, cx : width - nx, c].ravel()
                y = fmap[:, ny : height - cy, nx : width - cx, c].ravel()
                bins = int(1 + np.ceil(np.log2(len(x))))
                joint = histogram2d(
                    x,
                    y,
                    bins=bins,
                    range=[
                        [float(x.min()), float(x.max()) + 1e-12],
                        [float(y.min()), float(y.max()) + 1e-12],
                    ],
                )
                h = [
                    _entropy(joint.sum(0)),
                    _entropy(joint.sum(1)),
                    _entropy(joint.ravel()),
                ]
                with np.errstate(invalid="ignore", divide="ignore"):
                    nmi = (h[0] + h[1] - h[2]) / h[2]
                    value = k * nmi / ((k - 1) * nmi + 1)
                result[c, kh // 2 + dy, kw // 2 + dx] = value
                result[c, kh // 2 - dy, kw // 2 - dx] = value
    d = np.nanmean(result, axis=0)
    return d / d.mean()


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return -np.sum(p * np.log2(p))


def _status_mb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def timed_peak(fn):
    """`(fn(), seconds, peak extra resident MB)`; the peak is NaN where
    the kernel cannot reset it (not Linux, some sandboxes)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _status_mb("VmRSS")
    except (OSError, KeyError):
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    if before is None:
        return result, seconds, float("nan")
    return result, seconds, _status_mb("VmHWM") - before


def timed_refreshes(model, images, repeats):
    """`model` compiled with an `SGSWrapper` and an `MIScalingCallback` on
    `images`: `(callback, masks, seconds and peak extra MB of the first
    refresh, median seconds of `repeats` warm ones)`."""
    model.compile(keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1)), "mse")
    callback = keras_sgs.MIScalingCallback(images)
    callback.set_model(model)
    masks, first, first_mb = timed_peak(callback.refresh)
    warm = [timed_peak(callback.refresh)[1] for _ in range(repeats)]
    return callback, masks, first, first_mb, statistics.median(warm)


def measure(model, images):
    callback, masks, first, ours_mb, warm = timed_refreshes(
        model, images, FLAGS.repeats
    )
    layers = [layer for layer, _ in callback._targets]

    def authors_way():
        # The same forward pass, so that both estimate from identical maps.
        maps = [
            keras.ops.convert_to_numpy(m) for m in callback._capture(images)
        ]
        reference = {  # keyed as refresh() keys its masks
            layer.kernel.path: authors_dependence(
                fmap, layer.kernel_size, layer.padding
            )
            for layer, fmap in zip(layers, maps)
        }
        return reference, sum(m.nbytes for m in maps) / 2**20

    (reference, map_mb), authors, authors_mb = timed_peak(authors_way)
    error = max(
        np.abs(masks[name] - reference[name]).max() for name in reference
    )
    return dict(
        first=first,
        warm=warm,
        authors=authors,
        error=error,
        layers=len(layers),
        map_mb=map_mb,
        ours_mb=ours_mb,
        authors_mb=authors_mb,
    )


def in_fresh_process(fn, *args, backend=None):
    """`fn(*args)` in a new process (on Keras backend `backend`, default
    this one): its allocators hold no memory from earlier runs (else a
    peak would hide in their pools), and nothing is compiled yet."""
    context = multiprocessing.get_context("spawn")
    previous = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = backend or keras.backend.backend()
    try:
        with context.Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        if previous is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = previous


def measure_application(
    name, data, count, repeats, weights, load, compilation_cache=None
):
    """First and warm refresh of `keras.applications.<name>`, with its
    weights and captured feature maps saved to (`load=False`) or loaded
    from `weights` (and `weights + ".maps.npz"`), so that every backend
    estimates from the same model; the masks, and (`load=True`) the masks
    this backend's estimator gives on the saved maps. On JAX, with
    `compilation_cache` a folder, JAX's persistent compilation cache keeps
    every compiled program there, as a user's restarted run would."""
    if compilation_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    images, _ = cifar10_images(data, count)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=images.shape[1:], classes=10
    )
    if load:
        model.load_weights(weights)
    else:
        model.save_weights(weights)
    callback, masks, first, _, warm = timed_refreshes(model, images, repeats)
    layers = [layer for layer, _ in callback._targets]
    if load:
        with np.load(weights + ".maps.npz") as saved:
            same_maps = {
                layer.kernel.path: callback._estimate(layer, saved[layer.name])
                for layer in layers
                if layer.name in saved
            }
    else:
        maps = callback._capture(images)
        np.savez(
            weights + ".maps.npz",
            **{
                layer.name: keras.ops.convert_to_numpy(fmap)
                for layer, fmap in zip(layers, maps)
            },
        )
        same_maps = masks
    return dict(
        layers=len(layers),
        first=first,
        warm=warm,
        masks=masks,
        same_maps=same_maps,
    )


def max_mask_difference(ours, theirs):
    """The largest difference between two `{layer: mask}`, formatted: the
    absolute one, and relative to the layer's largest mask value (masks
    are `D / mean(D)`, so float32's error on `D` grows with them)."""
    both = ours.keys() & theirs.keys()
    if len(both) < max(len(ours), len(theirs)):
        return "**layers differ**"
    gaps = [np.abs(ours[k] - theirs[k]).max() for k in both]
    largest = [np.abs(theirs[k]).max() for k in both]
    relative = max(g / m for g, m in zip(gaps, largest))
    return f"{max(gaps):.1e} ({relative:.0e} relative)"


def measure_imagenet_map(repeats, shape=(256, 58, 58, 64)):
    rng = np.random.default_rng(0)
    fmap = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0.0)
    tensor = keras.ops.convert_to_tensor(fmap)

    def ours():
        d = keras_sgs.spatial_dependence(tensor, (3, 3))
        return keras.ops.convert_to_numpy(keras_sgs.dependence_to_scaling(d))

    mask, first, ours_mb = timed_peak(ours)
    warm = statistics.median(timed_peak(ours)[1] for _ in range(repeats))
    reference, authors, _ = timed_peak(
        lambda: authors_dependence(fmap, (3, 3), "same")
    )
    return dict(
        shape=shape,
        map_mb=fmap.nbytes / 2**20,
        first=first,
        warm=warm,
        ours_mb=ours_mb,
        authors=authors,
        error=np.abs(mask - reference).max(),
    )


def main(_):
    images, _ = cifar10_images(FLAGS.data, FLAGS.images)
    lines = [
        f"Backend and device: {device_description()}; "
        f"{FLAGS.images} CIFAR-10 images; one refresh = forward pass + "
        "estimator for every scaled conv layer.",
        "",
        "| model | conv layers | captured maps (MB) "
        "| keras_sgs first call (s, compiles) | keras_sgs warm (s) "
        "| authors' way (s) | speed-up | max abs mask diff "
        "| peak extra memory keras_sgs first call / authors (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    # (model, width, images, speed-up target); the last has small maps.
    for name, width, count, target in (
        ("vgg16", 1.0, FLAGS.images, 5),
        ("resnet18", 1.0, FLAGS.images, 5),
        ("vgg16", 0.5, FLAGS.images // 2, 2),
    ):
        keras.utils.set_random_seed(0)
        model = keras_sgs.models.build_model(name, 10, width=width)
        r = measure(model, images[:count])
        label = name if width == 1 else f"{name} width {width}, {count} images"
        lines.append(
            f"| {label} | {r['layers']} | {r['map_mb']:.0f} | "
            f"{r['first']:.2f} | {r['warm']:.2f} | {r['authors']:.2f} | "
            f"{r['authors'] / r['warm']:.1f}x (target {target}x) | "
            f"{r['error']:.1e} | {r['ours_mb']:.0f} / {r['authors_mb']:.0f} |"
        )
        if r["error"] > 1e-5:
            failures.append(f"**{label}: masks differ by {r['error']:.1e}**")
    lines += [""] + failures
    if FLAGS.imagenet_map:
        lines += imagenet_map_table()
    if FLAGS.applications:
        lines += applications_table()
    write_table(FLAGS.output, "\n".join(lines))


def applications_table():
    other = FLAGS.compare_backend
    if other == keras.backend.backend():
        other = ""
    # JAX can keep compiled programs on disk for a restarted run.
    restarts = keras.backend.backend() == "jax"
    columns = " restarted, first refresh (s) |" * restarts
    columns += (
        f" {other} warm (s) | {other} / this backend | max abs mask diff "
        "| max abs mask diff, same maps |"
        if other
        else ""
    )
    lines = [
        "",
        "First refresh on `keras.applications` models (`weights=None`, "
        f"32x32, {FLAGS.images} images), each in a new process; target: "
        "first <= 3 x warm + 5 s"
        + (
            f"; {other}: same weights and images, target <= 2x; the mask "
            "difference of the whole refresh includes the two backends' "
            "forward passes, that on the same maps (this backend's, saved) "
            "the estimators alone"
            if other
            else ""
        )
        + (
            "; restarted: the first refresh of a new process that finds "
            "the programs compiled by an earlier one in JAX's persistent "
            "compilation cache (`jax_compilation_cache_dir`, "
            "`jax_persistent_cache_min_compile_time_secs=0`)"
            if restarts
            else ""
        )
        + ":",
        "",
        "| model | scaled conv layers | first refresh (s, compiles) "
        "| warm refresh (s) | target (s) | met |" + columns,
        "|---|---|---|---|---|---|"
        + "---|" * restarts
        + "---|---|---|---|" * bool(other),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name in FLAGS.applications:
            weights = os.path.join(folder, f"{name}.weights.h5")
            args = (name, FLAGS.data, FLAGS.images, FLAGS.repeats, weights)
            r = in_fresh_process(measure_application, *args, False)
            target = 3 * r["warm"] + 5
            line = (
                f"| {name} | {r['layers']} | {r['first']:.1f} | "
                f"{r['warm']:.2f} | {target:.1f} | "
                f"{'yes' if r['first'] <= target else '**no**'} |"
            )
            if restarts:
                cache = os.path.join(folder, f"{name}.cache")
                for _ in range(2):  # fills the cache, then reads it
                    again = in_fresh_process(
                        measure_application, *args, True, cache
                    )
                line += f" {again['first']:.1f} |"
            if other:
                try:
                    o = in_fresh_process(
                        measure_application, *args, True, backend=other
                    )
                except ValueError as error:  # NASNet on PyTorch
                    lines.append(line + f" {error} | | | |")
                    continue
                line += (
                    f" {o['warm']:.2f} | {o['warm'] / r['warm']:.1f}x | "
                    f"{max_mask_difference(r['masks'], o['masks'])} | "
                    f"{max_mask_difference(r['same_maps'], o['same_maps'])} |"
                )
            lines.append(line)
    return lines


def imagenet_map_table():
    r = in_fresh_process(measure_imagenet_map, FLAGS.repeats)
    return [
        "",
        "`spatial_dependence` alone on an ImageNet-sized map (3x3 kernel):",
        "",
        "| map shape | map (MB) | keras_sgs first call (s, compiles) "
        "| keras_sgs warm (s) | authors' way (s) | speed-up "
        "| peak extra memory, first call (MB) | / map | max abs mask diff |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {' x '.join(map(str, r['shape']))} | {r['map_mb']:.0f} | "
        f"{r['first']:.2f} | {r['warm']:.2f} | {r['authors']:.2f} | "
        f"{r['authors'] / r['warm']:.1f}x | {r['ours_mb']:.0f} | "
        f"{r['ours_mb'] / r['map_mb']:.2f} | {r['error']:.1e} |",
    ]


if __name__ == "__main__":
    app.run(main)

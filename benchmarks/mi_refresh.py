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
  `fast_histogram.histogram2d` (as in the authors' `dependence.py`), in
  float64 so that a channel's maximum stays in its last bin.

The masks of both must agree to 1e-5. Peak memory is the growth of the
process's maximum resident set during each phase (keras_sgs runs first).

    KERAS_BACKEND=tensorflow python benchmarks/mi_refresh.py
"""

import resource
import statistics
import time

from absl import app
from absl import flags

import keras
import numpy as np

import keras_sgs
from common import cifar10_images
from common import device_description
from common import write_table

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data", "../shared/data/cifar10/train-00000-of-00008.tfrecord",
    "TFRecords of real images.",
)
flags.DEFINE_integer("images", 256, "Held-out images per refresh.")
flags.DEFINE_integer("repeats", 3, "Warm keras_sgs refreshes to time.")
flags.DEFINE_string(
    "output", "benchmarks/results/mi_refresh.md", "Markdown table path."
)

def authors_dependence(fmap, kernel_size, padding, k=5.0):
    """Per channel, per displacement, with fast_histogram (host, float64)."""
    from fast_histogram import histogram2d

    kh, kw = kernel_size
    fmap = fmap.astype(np.float64)
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
                    x, y, bins=bins,
                    range=[[x.min(), x.max() + 1e-12], [y.min(), y.max() + 1e-12]],
                )
                h = [_entropy(joint.sum(0)), _entropy(joint.sum(1)),
                     _entropy(joint.ravel())]
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


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model, images):
    model.compile(keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1)), "mse")
    callback = keras_sgs.MIScalingCallback(images)
    callback.set_model(model)
    before = peak_mb()
    start = time.perf_counter()
    masks = callback.refresh()
    first = time.perf_counter() - start
    warm = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        masks = callback.refresh()
        warm.append(time.perf_counter() - start)
    ours_mb = peak_mb() - before
    layers = [layer for layer, _ in callback._targets]
    before = peak_mb()
    start = time.perf_counter()
    # The same forward pass, so that both estimate from identical maps.
    maps = [keras.ops.convert_to_numpy(m) for m in callback._capture(images)]
    reference = {
        layer.name: authors_dependence(
            np.asarray(fmap), layer.kernel_size, layer.padding
        )
        for layer, fmap in zip(layers, maps)
    }
    authors = time.perf_counter() - start
    authors_mb = peak_mb() - before
    error = max(
        np.abs(masks[name] - reference[name]).max() for name in reference
    )
    map_mb = sum(np.asarray(m).nbytes for m in maps) / 2**20
    return dict(
        first=first, warm=statistics.median(warm), authors=authors,
        error=error, layers=len(layers), map_mb=map_mb, ours_mb=ours_mb,
        authors_mb=authors_mb,
    )


def main(_):
    images, _ = cifar10_images(FLAGS.data, FLAGS.images)
    lines = [
        f"Backend and device: {device_description()}; "
        f"{FLAGS.images} CIFAR-10 images; one refresh = forward pass + "
        "estimator for every scaled conv layer.",
        "",
        "| model | conv layers | captured maps (MB) | keras_sgs first call (s, compiles) "
        "| keras_sgs warm (s) | authors' way (s) | speed-up | max abs mask diff "
        "| peak RSS growth keras_sgs / authors (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("vgg16", "resnet18"):
        keras.utils.set_random_seed(0)
        r = measure(keras_sgs.models.build_model(name, 10), images)
        lines.append(
            f"| {name} | {r['layers']} | {r['map_mb']:.0f} | "
            f"{r['first']:.2f} | {r['warm']:.2f} | {r['authors']:.2f} | "
            f"{r['authors'] / r['warm']:.1f}x | {r['error']:.1e} | "
            f"{r['ours_mb']:.0f} / {r['authors_mb']:.0f} |"
        )
        if r["error"] > 1e-5:
            lines.append(f"\n**{name}: masks differ by {r['error']}**")
    write_table(FLAGS.output, "\n".join(lines))


if __name__ == "__main__":
    app.run(main)

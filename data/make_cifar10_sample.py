"""Writes `data/cifar10_sample/`: a small class-balanced CIFAR-10 sample.

The examples and their tests train on this sample, so they run from a
clone of the repository alone. The records are copied unchanged (the
original `tf.train.Example`s with `image/encoded` PNG bytes and
`image/class/label`) from the full CIFAR-10 TFRecords: the first
`--train_per_class` images of each class in the training shards, read in
sorted order, and the first `--test_per_class` of the test shards.

```sh
python3 data/make_cifar10_sample.py   # reads ../shared/data/cifar10
```
"""

import argparse
import hashlib
import pathlib

import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def balanced_records(pattern, per_class):
    """The first `per_class` serialized records of each class.

    Args:
        pattern: str. A glob of TFRecord files, read in sorted order.
        per_class: int. Records kept per class.

    Returns:
        A list of serialized `tf.train.Example`s, in file order.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord file matches {pattern!r}.")
    counts = [0] * NUM_CLASSES
    kept = []
    for record in tf.data.TFRecordDataset(files):
        label = int(
            tf.io.parse_single_example(record, FEATURES)["image/class/label"]
        )
        if counts[label] < per_class:
            counts[label] += 1
            kept.append(record.numpy())
        if min(counts) == per_class:
            return kept
    raise ValueError(
        f"{pattern!r} has fewer than {per_class} images of some class: "
        f"{counts}."
    )


def write_records(path, records):
    """Writes serialized records to one TFRecord file; returns its sha256."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_readme(out_dir, source, rows):
    lines = [
        "# CIFAR-10 sample",
        "",
        "A small class-balanced sample of CIFAR-10 for the examples and "
        "their tests,",
        "written by `data/make_cifar10_sample.py` (records copied unchanged: "
        "`tf.train.Example`",
        "with `image/encoded` PNG bytes and `image/class/label` int64).",
        "",
        f"Source: `{source}`; the first images of each class in sorted "
        "shard order.",
        "Rerun the script to rebuild the files byte for byte.",
        "",
        "| file | images | per class | sha256 |",
        "|---|---|---|---|",
    ]
    for name, count, per_class, digest in rows:
        lines.append(f"| `{name}` | {count} | {per_class} | `{digest}` |")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=str(REPO.parent / "shared" / "data" / "cifar10"),
        help="Folder of the full CIFAR-10 TFRecords (train-*-of-00008, "
        "test-*-of-00002).",
    )
    parser.add_argument(
        "--out_dir",
        default=str(REPO / "data" / "cifar10_sample"),
        help="Where to write train.tfrecord, test.tfrecord and README.md.",
    )
    parser.add_argument(
        "--train_per_class",
        type=int,
        default=400,
        help="Training images per class.",
    )
    parser.add_argument(
        "--test_per_class",
        type=int,
        default=100,
        help="Test images per class.",
    )
    args = parser.parse_args()
    source = pathlib.Path(args.source)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, per_class in [
        ("train", args.train_per_class),
        ("test", args.test_per_class),
    ]:
        records = balanced_records(
            str(source / f"{split}-*.tfrecord"), per_class
        )
        name = f"{split}.tfrecord"
        digest = write_records(out_dir / name, records)
        rows.append((name, len(records), per_class, digest))
        print(f"{out_dir / name}: {len(records)} images, sha256 {digest}")
    write_readme(out_dir, "shared/data/cifar10/{train,test}-*.tfrecord", rows)


if __name__ == "__main__":
    main()

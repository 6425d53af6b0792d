"""The TensorFlow-free TFRecord reader against TensorFlow's own encoding of
the CIFAR-10 shards, and its errors on malformed files."""

import sys

import numpy as np
import pytest
from conftest import CIFAR10_DIR

from keras_sgs.tfrecords import read_image_records

SHARD = CIFAR10_DIR / "test-00000-of-00002.tfrecord"


def test_reads_real_cifar10_records():
    images, labels = read_image_records(str(SHARD), limit=300)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert set(labels) <= set(range(10)) and len(set(labels)) == 10
    assert 50 < images.mean() < 200  # decoded pixels, not zeros
    # Two shards, read in order, continue where the first stops.
    both, _ = read_image_records(str(CIFAR10_DIR / "test-*.tfrecord"))
    assert len(both) == 10_000
    np.testing.assert_array_equal(both[:300], images)


@pytest.mark.parametrize(
    "content, match",
    [
        (lambda real: real[:100_000], r"\(record 98\): .*claims \d+ bytes"),
        (lambda real: bytes(range(256)) * 20, r"\(record 0\): .*claims"),
        (lambda real: real[:8], "truncated record header"),
    ],
)
def test_malformed_files_are_named(tmp_path, content, match):
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(content(SHARD.read_bytes()))
    with pytest.raises(ValueError, match=match) as error:
        read_image_records(str(path))
    assert str(path) in str(error.value)


def test_no_file():
    with pytest.raises(ValueError, match="matches no file"):
        read_image_records("/nonexistent/*.tfrecord")


def test_without_pillow_the_error_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL fails
    with pytest.raises(ImportError, match=r"keras-sgs\[tfrecords\]"):
        read_image_records(str(SHARD), limit=1)

"""Read image TFRecords without TensorFlow (for JAX/PyTorch and tests).

The records are `tf.train.Example`s with the features TensorFlow's ImageNet
TFRecords use: `image/encoded` (JPEG or PNG bytes) and `image/class/label`
(int64). The TFRecord framing and the few protobuf fields involved are
parsed here; images are decoded with Pillow. CRCs are not checked.
"""

import glob
import io
import struct

import numpy as np


def _varint(buf, pos):
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """Yields `(field_number, wire_type, value)` of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"Unsupported protobuf wire type {wire}.")
        yield number, wire, value


def _parse_example(record):
    """Returns `{name: list of bytes or ints}` for one `tf.train.Example`."""
    features = {}
    for _, _, features_msg in _fields(record):  # Example.features
        for _, _, entry in _fields(features_msg):  # Features.feature map
            key = value = None
            for number, _, field in _fields(entry):
                if number == 1:
                    key = bytes(field).decode()
                else:
                    value = field
            values = []
            for kind, _, lst in _fields(value or b""):  # Feature oneof
                for _, wire, item in _fields(lst):
                    if kind == 1:  # BytesList
                        values.append(bytes(item))
                    elif kind == 3 and wire == 2:  # packed Int64List
                        pos = 0
                        while pos < len(item):
                            v, pos = _varint(item, pos)
                            values.append(v - (1 << 64) if v >> 63 else v)
                    elif kind == 3:
                        values.append(item - (1 << 64) if item >> 63 else item)
            features[key] = values
    return features


def _records(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"truncated record header at byte {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        if length > len(data) - pos - 16:
            raise ValueError(
                f"the record at byte {pos} claims {length} bytes, "
                f"{len(data) - pos - 16} follow"
            )
        pos += 12  # length and its masked CRC
        yield memoryview(data)[pos : pos + length]
        pos += length + 4  # data and its masked CRC


def decode_image(encoded):
    """Decodes JPEG or PNG bytes with Pillow into a uint8 RGB array
    `(H, W, 3)`.

    Example:

    ```python
    from keras_sgs import tfrecords

    image = tfrecords.decode_image(open("cat.jpg", "rb").read())
    ```

    Args:
        encoded: bytes. An encoded image.

    Returns:
        A uint8 numpy array `(height, width, 3)`.

    Raises:
        ImportError: Pillow is not installed.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "Decoding images needs Pillow: `pip install pillow` (or "
            '`pip install "keras-sgs[tfrecords]"`).'
        ) from None

    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def _decode(record):
    """`(uint8 image, label)` of one record."""
    example = _parse_example(bytes(record))
    image = decode_image(example["image/encoded"][0])
    return image, example["image/class/label"][0]


def read_image_records(pattern, limit=None):
    """Reads labelled images from TFRecord files into numpy arrays.

    Example:

    ```python
    from keras_sgs import tfrecords

    images, labels = tfrecords.read_image_records(
        "data/cifar10_sample/train.tfrecord", limit=256
    )
    images.shape  # (256, 32, 32, 3), uint8
    ```

    Args:
        pattern: str. A glob of TFRecord files, read in sorted order.
        limit: int or `None`. Read at most this many images.

    Returns:
        `(images, labels)`: a uint8 array `(N, H, W, 3)` and an int64 array
        `(N,)`.

    Raises:
        ValueError: `pattern` matches no file, a file is not a TFRecord file
            of such examples (the message names it), or the images differ
            in size.
    """
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(
            f"`pattern` matches no file. Received: pattern={pattern!r}"
        )
    images, labels = [], []
    for path in paths:
        if limit is not None and len(images) >= limit:
            break
        index = 0  # of the record being read
        try:
            for record in _records(path):
                if limit is not None and len(images) >= limit:
                    break
                image, label = _decode(record)
                images.append(image)
                labels.append(label)
                index += 1
        except ImportError:
            raise  # no Pillow: not the file's fault
        except Exception as error:  # struct, protobuf, Pillow: all malformed
            raise ValueError(
                f"{path} is not a TFRecord file of tf.train.Example images "
                f"with image/encoded and image/class/label (record {index}): "
                f"{type(error).__name__}: {error}"
            ) from error
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"The images of {pattern!r} differ in size: {sorted(shapes)}"
        )
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)

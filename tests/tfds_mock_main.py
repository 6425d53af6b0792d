"""Runs an example script with tensorflow_datasets mocked (not a test
module itself).

Usage: `python tfds_mock_main.py NUM_EXAMPLES SCRIPT [FLAGS...]`

`tfds.testing.mock_data` (tensorflow_datasets' own way to test pipelines
without downloads) makes every `tfds.load` return `NUM_EXAMPLES` random
examples with the dataset's real features (encoded images, labels in the
real number of classes).
"""

import os
import runpy
import sys

import tensorflow_datasets as tfds

num_examples, script, *flags = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
sys.argv = [script, *flags]
with tfds.testing.mock_data(num_examples=int(num_examples)):
    runpy.run_path(script, run_name="__main__")

"""Put first on PYTHONPATH, makes `import tensorflow` fail as on a machine
without TensorFlow (the GPU machine the benchmarks also run on)."""

raise ImportError("TensorFlow is not installed here (tests/no_tensorflow).")

# Sourced by the GPU scripts, in the repository root with $OUT set: the
# environment of a JAX run, Keras from the carried wheels where it is not
# installed (the GPU machine), the GPU's name at the top of $OUT/log.txt.
mkdir -p "$OUT"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
# Compiled programs kept for the next process (the calibration's for the study,
# one call's for the next on the same machine).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/keras_sgs_jax_cache}
if ! python3 -c "import keras" 2>/dev/null; then  # the GPU machine: no Keras
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# The GPU by name (nvidia-smi -L would add its UUID, of no use to a reader).
(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no nvidia-smi") | tee "$OUT/log.txt"

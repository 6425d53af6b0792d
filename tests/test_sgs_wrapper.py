"""SGSWrapper against independent references: the inner optimizer, a
hand-computed numpy update and a branched model trained on CIFAR-10."""

import contextlib
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND

import keras_sgs

ACB = keras_sgs.mask_from_branches(
    (3, 3), [((3, 3), 1.0), ((1, 3), 1.0), ((3, 1), 1.0)]
)


def mixed_model():
    """One of each layer kind SGSWrapper must scale or must leave alone."""
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2d")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="separable")(x)
    x = keras.layers.Conv2DTranspose(4, 3, padding="same", name="transpose")(x)
    x = keras.layers.Conv2D(4, 1, name="pointwise_1x1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    t = keras.layers.Embedding(10, 8, name="embedding")(tokens)
    t = keras.layers.Conv1D(8, 3, padding="same", name="conv1d")(t)
    t = keras.layers.MultiHeadAttention(2, 4, name="mha")(t, t)
    t = keras.layers.GlobalAveragePooling1D()(t)
    volume = keras.Input((4, 4, 4, 2), name="volume")
    v = keras.layers.Conv3D(2, 3, padding="same", name="conv3d")(volume)
    v = keras.layers.GlobalAveragePooling3D()(v)
    out = keras.layers.Dense(3, name="dense")(
        keras.layers.Concatenate()([x, t, v])
    )
    return keras.Model([image, tokens, volume], out)


SCALED = {
    "conv2d/kernel",
    "depthwise/kernel",
    "separable/depthwise_kernel",
    "transpose/kernel",
    "conv1d/kernel",
    "conv3d/kernel",
}


def scaled_paths(model, optimizer):
    return {
        v.path
        for v in model.trainable_variables
        if optimizer.get_mask(v) is not None
    }


def random_grads(variables, rng):
    return [
        keras.ops.convert_to_tensor(rng.normal(size=v.shape), "float32")
        for v in variables
    ]


def values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def random_problem(seed, num_steps):
    """A mixed model, its variables, their start values and random
    gradients. Keep the model: SGSWrapper finds conv kernels through their
    live layers."""
    rng = np.random.default_rng(seed)
    model = mixed_model()
    variables = model.trainable_variables
    steps = [random_grads(variables, rng) for _ in range(num_steps)]
    return model, variables, values(variables), steps


def trajectory(optimizer, variables, start, steps):
    """Resets `variables` to `start`, applies each step's gradients and
    returns the variables' values after every step."""
    for v, x in zip(variables, start):
        v.assign(x)
    after = []
    for grads in steps:
        optimizer.apply(grads, variables)
        after.append(values(variables))
    return after


def test_selects_exactly_the_conv_kernels():
    model = mixed_model()
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1))
    optimizer.build(model.trainable_variables)
    assert scaled_paths(model, optimizer) == SCALED
    for v in model.trainable_variables:
        mask = optimizer.get_mask(v)
        if mask is not None:
            assert tuple(mask.shape) == tuple(v.shape[:-2]) + (1, 1)
            assert mask.dtype == "float32"
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), 1)


def test_all_ones_masks_give_the_inner_trajectory():
    _, variables, start, steps = random_problem(0, 4)
    kwargs = dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2)
    plain = trajectory(keras.optimizers.SGD(**kwargs), variables, start, steps)
    wrapped = trajectory(
        keras_sgs.SGSWrapper(keras.optimizers.SGD(**kwargs)),
        variables,
        start,
        steps,
    )
    for a, b in zip(plain[-1], wrapped[-1]):
        np.testing.assert_array_equal(a, b)


def test_fit_with_all_ones_masks_matches_inner():
    rng = np.random.default_rng(1)
    data = (
        [
            rng.normal(size=(16, 8, 8, 3)),
            rng.integers(0, 10, (16, 6)),
            rng.normal(size=(16, 4, 4, 4, 2)),
        ],
        rng.normal(size=(16, 3)),
    )
    results = []
    for wrap in (False, True):
        keras.utils.set_random_seed(3)
        model = mixed_model()
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        if wrap:
            optimizer = keras_sgs.SGSWrapper(optimizer)
        model.compile(optimizer, "mse")
        model.fit(*data, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append(values(model.trainable_variables))
        assert int(model.optimizer.iterations) == 4
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def assert_variables_equal(variables, expected, rtol, atol):
    """Each variable's value equals its expected array (named on failure)."""
    for v, x in zip(variables, expected):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v),
            x,
            rtol=rtol,
            atol=atol,
            err_msg=v.path,
        )


def reference_sgd(start, steps, masks, lr, momentum, nesterov, wd):
    """Keras SGD's update written out in numpy, with the SGS mask."""
    variables = [x.astype(np.float64) for x in start]
    moments = [np.zeros_like(x) for x in variables]
    for grads in steps:
        for i, (g, mask) in enumerate(zip(grads, masks)):
            g = g.astype(np.float64) * (1.0 if mask is None else mask)
            variables[i] = variables[i] - variables[i] * wd * lr
            moments[i] = moments[i] * momentum - g * lr
            if nesterov:
                variables[i] += moments[i] * momentum - g * lr
            else:
                variables[i] += moments[i]
    return variables


@pytest.mark.parametrize(
    "momentum, nesterov, wd",
    [
        (0.0, False, 0.0),
        (0.9, False, 0.0),
        (0.9, True, 0.0),
        (0.9, False, 0.05),
    ],
)
def test_hand_computed_sgd_update(momentum, nesterov, wd):
    rng = np.random.default_rng(2)
    model = mixed_model()
    # One mask from the constructor (by layer name), one by variable path,
    # the rest set after building.
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(
            0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd or None
        ),
        masks={"conv2d": ACB / ACB.mean(), "conv1d/kernel": [0.5, 2.0, 0.5]},
    )
    variables = model.trainable_variables
    optimizer.build(variables)
    masks = []
    for v in variables:
        if v.path in ("conv2d/kernel", "conv1d/kernel"):
            masks.append(keras.ops.convert_to_numpy(optimizer.get_mask(v)))
        elif v.path in SCALED:
            mask = rng.uniform(0.0, 3.0, size=tuple(v.shape[:-2]))
            optimizer.set_mask(v, mask)
            masks.append(mask.reshape(mask.shape + (1, 1)))
        else:
            masks.append(None)
    np.testing.assert_allclose(masks[0][..., 0, 0], ACB / ACB.mean())
    start = values(variables)
    steps = [random_grads(variables, rng) for _ in range(3)]
    for grads in steps:
        optimizer.apply(grads, variables)
    steps = [[keras.ops.convert_to_numpy(g) for g in s] for s in steps]
    expected = reference_sgd(start, steps, masks, 0.1, momentum, nesterov, wd)
    assert_variables_equal(variables, expected, rtol=2e-5, atol=2e-6)
    assert int(optimizer.iterations) == 3


def reference_torch_sgd(
    start, steps, masks, decayed, lr, momentum, nesterov, wd
):
    """PyTorch's `SGD(lr, momentum, nesterov=..., weight_decay=wd)` on the
    masked gradients, in numpy: `d = S * g + wd * w` (where decayed),
    `b = momentum * b + d`, `w -= lr * (d + momentum * b if nesterov else
    b)`."""
    variables = [x.astype(np.float64) for x in start]
    buffers = [None] * len(variables)
    for grads in steps:
        for i, (g, mask) in enumerate(zip(grads, masks)):
            d = g.astype(np.float64) * (1.0 if mask is None else mask)
            if decayed[i]:
                d = d + wd * variables[i]
            buffers[i] = d if buffers[i] is None else momentum * buffers[i] + d
            d = d + momentum * buffers[i] if nesterov else buffers[i]
            variables[i] = variables[i] - lr * d
    return variables


@pytest.mark.parametrize("mode", ["gradient", "update"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_weight_decay_is_pytorch_sgd_on_the_masked_gradient(
    mode, nesterov
):
    model, variables, start, steps = random_problem(6, 4)
    excluded = model.get_layer("dense").bias
    inner = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov)
    inner.exclude_from_weight_decay(var_list=[excluded])
    masks = {"conv2d": ACB / ACB.mean(), "conv1d/kernel": [0.5, 2.0, 0.5]}
    optimizer = keras_sgs.SGSWrapper(
        inner, mode=mode, masks=masks, coupled_weight_decay=0.05
    )
    trajectory(optimizer, variables, start, steps)
    mask_values = [optimizer.get_mask(v) for v in variables]
    mask_values = [
        None if m is None else keras.ops.convert_to_numpy(m)
        for m in mask_values
    ]
    decayed = [v.path != excluded.path for v in variables]
    numpy_steps = [[keras.ops.convert_to_numpy(g) for g in s] for s in steps]
    expected = reference_torch_sgd(
        start, numpy_steps, mask_values, decayed, 0.1, 0.9, nesterov, 0.05
    )
    assert_variables_equal(variables, expected, rtol=2e-5, atol=2e-6)
    # Not a no-op: without the decay the trajectory differs.
    plain = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov),
        mode=mode,
        masks=masks,
    )
    without = trajectory(plain, variables, start, steps)[-1]
    assert not np.allclose(without[0], expected[0], rtol=1e-3)


def test_coupled_weight_decay_follows_the_inner_loss_scale():
    _, variables, start, steps = random_problem(7, 3)
    scaled_steps = [[g * 8.0 for g in s] for s in steps]
    results = [
        trajectory(
            keras_sgs.SGSWrapper(
                keras.optimizers.SGD(
                    0.1, momentum=0.9, loss_scale_factor=scale
                ),
                masks=ACB,
                coupled_weight_decay=0.05,
            ),
            variables,
            start,
            grads,
        )[-1]
        for scale, grads in ((None, steps), (8.0, scaled_steps))
    ]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_apply_without_variables_after_build():
    # The JAX trainer calls apply(grads) with no variables.
    rng = np.random.default_rng(3)
    model = mixed_model()
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(1.0), masks=ACB)
    optimizer.build(model.trainable_variables)
    kernel = model.get_layer("conv2d").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    grads = random_grads(model.trainable_variables, rng)
    optimizer.apply(grads)
    index = [v.path for v in model.trainable_variables].index(kernel.path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(kernel),
        before
        - ACB[..., None, None] * keras.ops.convert_to_numpy(grads[index]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_update_mode_scales_adam_steps():
    _, variables, start, steps = random_problem(4, 3)

    # Adam's step only depends on the gradients, so plain Adam gives the
    # unmasked steps u_t; with decoupled decay the reference is
    # v <- v - lr*wd*v + S*u_t.
    plain = [start] + trajectory(
        keras.optimizers.Adam(0.01), variables, start, steps
    )
    plain_steps = [
        [a - b for a, b in zip(after, before)]
        for before, after in zip(plain, plain[1:])
    ]
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.AdamW(0.01, weight_decay=0.1),
        mode="update",
        masks=ACB,
    )
    trajectory(optimizer, variables, start, steps)
    expected = [x.astype(np.float64) for x in start]
    for deltas in plain_steps:
        for i, (v, d) in enumerate(zip(variables, deltas)):
            mask = optimizer.get_mask(v)
            mask = 1.0 if mask is None else keras.ops.convert_to_numpy(mask)
            expected[i] = expected[i] - 0.01 * 0.1 * expected[i] + mask * d
    assert_variables_equal(variables, expected, rtol=1e-4, atol=1e-6)


def test_update_mode_equals_gradient_mode_for_plain_sgd():
    _, variables, start, steps = random_problem(5, 3)
    results = [
        trajectory(
            keras_sgs.SGSWrapper(
                keras.optimizers.SGD(0.1, weight_decay=0.05),
                mode=mode,
                masks=ACB,
            ),
            variables,
            start,
            steps,
        )[-1]
        for mode in ("gradient", "update")
    ]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_update_mode_keeps_zero_mask_positions_exactly():
    model, variables, start, steps = random_problem(8, 20)
    mask = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [0.5, 1.0, 0.0]])
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.Adam(0.5), mode="update", masks={"conv2d": mask}
    )
    trajectory(optimizer, variables, start, steps)
    kernel = model.get_layer("conv2d").kernel
    index = [v.path for v in variables].index(kernel.path)
    after = keras.ops.convert_to_numpy(kernel)
    frozen = mask == 0
    np.testing.assert_array_equal(after[frozen], start[index][frozen])
    assert np.all(after[~frozen] != start[index][~frozen])


def test_set_mask_inside_a_traced_function_says_when_to_call_it():
    model = mixed_model()
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1))
    optimizer.build(model.trainable_variables)
    kernel = model.get_layer("conv2d").kernel
    if BACKEND == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda: optimizer.set_mask(kernel, ACB))
        call = traced
    elif BACKEND == "jax":
        import jax

        traced = jax.jit(lambda m: optimizer.set_mask(kernel, m))
        call = lambda: traced(ACB)  # noqa: E731
    else:
        pytest.skip("PyTorch runs the train step eagerly")
    with pytest.raises(RuntimeError, match="between steps"):
        call()
    optimizer.set_mask(kernel, ACB)  # eagerly: fine


def test_gradient_mode_warns_for_adaptive_optimizers():
    with pytest.warns(UserWarning, match="mode='update'"):
        keras_sgs.SGSWrapper(keras.optimizers.Adam())
    with pytest.warns(UserWarning, match="Lion"):
        keras_sgs.SGSWrapper(keras.optimizers.Lion())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_sgs.SGSWrapper(keras.optimizers.SGD())
        keras_sgs.SGSWrapper(keras.optimizers.Adam(), mode="update")


def test_warns_when_no_kernel_is_scaled():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(2, 1),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD())
    with pytest.warns(UserWarning, match="no conv kernel to scale"):
        optimizer.build(model.trainable_variables)
    assert all(m is None for m in optimizer._masks)


def test_forwarding():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    inner = keras.optimizers.SGD(schedule, loss_scale_factor=4.0)
    optimizer = keras_sgs.SGSWrapper(inner)
    model = mixed_model()
    optimizer.build(model.trainable_variables)
    assert optimizer.iterations is inner.iterations
    assert float(optimizer.learning_rate) == pytest.approx(0.1)
    assert optimizer.loss_scale_factor == 4.0
    assert float(optimizer.scale_loss(keras.ops.ones(()))) == 4.0
    optimizer.loss_scale_factor = None
    assert inner.loss_scale_factor is None
    for _ in range(10):
        optimizer.apply(
            random_grads(model.trainable_variables, np.random.default_rng()),
            model.trainable_variables,
        )
    assert float(optimizer.learning_rate) == pytest.approx(0.05)

    inner = keras.optimizers.SGD(0.1)
    keras_sgs.SGSWrapper(inner).learning_rate = 0.5
    assert float(inner.learning_rate) == pytest.approx(0.5)

    inner = keras.optimizers.SGD(0.1, weight_decay=0.1)
    optimizer = keras_sgs.SGSWrapper(inner)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    bias = model.get_layer("dense").bias
    assert not inner._use_weight_decay(bias)


def test_ema_finalisation_is_forwarded():
    model = mixed_model()
    inner = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
    optimizer = keras_sgs.SGSWrapper(inner)
    variables = model.trainable_variables
    rng = np.random.default_rng(6)
    for _ in range(3):
        optimizer.apply(random_grads(variables, rng), variables)
    averages = values(inner._model_variables_moving_average)
    optimizer.finalize_variable_values(variables)
    for v, a in zip(variables, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), a)


def _built(optimizer, variables):
    optimizer.build(variables)
    return optimizer


def warns_if(expected, match):
    """`pytest.warns(UserWarning, match=match)` when `expected`, else a
    context that checks nothing (for tests whose parameters decide)."""
    if expected:
        return pytest.warns(UserWarning, match=match)
    return contextlib.nullcontext()


def _assert_same_values(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y)
        )


def test_variables_are_the_inner_state_then_the_masks():
    model = mixed_model()
    variables = model.trainable_variables
    inner = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer = _built(keras_sgs.SGSWrapper(inner), variables)
    masks = [optimizer.get_mask(v) for v in variables]
    masks = [m for m in masks if m is not None]
    assert optimizer.variables == inner.variables + masks
    # Code that reads the step count as `variables[0]` (Keras's own tests
    # do) finds it.
    assert optimizer.variables[0] is optimizer.iterations


def test_set_weights_restores_the_inner_state():
    _, variables, start, steps = random_problem(7, 2)
    source = keras_sgs.SGSWrapper(keras.optimizers.Adam(0.01), mode="update")
    trajectory(source, variables, start, steps)
    source.set_mask(variables[0], np.full((3, 3), 2.0))
    target = _built(
        keras_sgs.SGSWrapper(keras.optimizers.Adam(0.01), mode="update"),
        variables,
    )
    target.set_weights(
        [keras.ops.convert_to_numpy(v) for v in source.variables]
    )
    assert int(target.iterations) == 2
    _assert_same_values(source.variables, target.variables)
    with pytest.raises(ValueError, match="must hold"):
        target.set_weights([])


def test_loads_the_state_of_the_plain_inner_optimizer():
    _, variables, start, steps = random_problem(8, 2)
    plain = keras.optimizers.SGD(0.1, momentum=0.9)
    trajectory(plain, variables, start, steps)
    store = {}
    plain.save_own_variables(store)

    def wrapped_sgd():
        return _built(
            keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1, momentum=0.9)),
            variables,
        )

    wrapped = wrapped_sgd()
    wrapped.load_own_variables(store)
    assert int(wrapped.iterations) == 2
    _assert_same_values(plain.variables, wrapped.inner_optimizer.variables)
    # And its own state, masks included, round-trips.
    wrapped.set_mask(variables[0], np.full((3, 3), 0.5))
    store = {}
    wrapped.save_own_variables(store)
    other = wrapped_sgd()
    other.load_own_variables(store)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(other.get_mask(variables[0]))[..., 0, 0],
        0.5,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Nadam(0.01),
        lambda: keras.optimizers.Adafactor(0.01),
    ],
)
def test_tracks_what_the_inner_optimizer_builds(make):
    """Nadam's `_u_product` and Adafactor's factored moments are created
    in `build` and found by attribute tracking only."""
    model = mixed_model()
    variables = model.trainable_variables
    plain = _built(make(), variables)
    optimizer = _built(keras_sgs.SGSWrapper(make(), mode="update"), variables)

    def shapes(optimizer):
        return [tuple(v.shape) for v in optimizer.variables]

    assert shapes(optimizer.inner_optimizer) == shapes(plain)
    assert len(shapes(plain)) > 2 + 2 * len(variables)  # beyond the moments


def test_apply_with_no_gradients_is_a_no_op():
    model, variables, start, steps = random_problem(9, 1)
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1))
    optimizer.apply([], [])
    assert not optimizer.built
    trajectory(optimizer, variables, start, steps)  # builds and steps
    assert int(optimizer.iterations) == 1


def test_update_mode_applies_a_constraint_once():
    """With all-ones masks the update mode equals the inner optimizer even
    under a constraint that is not idempotent (MaxNorm)."""
    rng = np.random.default_rng(10)

    def make_model():
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(
            3,
            3,
            kernel_constraint=keras.constraints.MaxNorm(0.3),
            name="conv",
        )(inputs)
        return keras.Model(inputs, x)

    model = make_model()
    variables = model.trainable_variables
    start = values(variables)
    steps = [random_grads(variables, rng) for _ in range(20)]
    plain = trajectory(keras.optimizers.SGD(0.5), variables, start, steps)
    wrapped = trajectory(
        keras_sgs.SGSWrapper(keras.optimizers.SGD(0.5), mode="update"),
        variables,
        start,
        steps,
    )
    for a, b in zip(plain[-1], wrapped[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_swap_ema_weights_under_mixed_precision(mixed_float16):
    """`compile()` wraps the wrapper in a `LossScaleOptimizer`; Keras's
    `SwapEMAWeights` must find the averages through it, and training must
    equal the plain inner optimizer's (all-ones masks)."""
    rng = np.random.default_rng(11)
    images = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    targets = rng.normal(size=(16, 2)).astype("float32")

    def train(optimizer):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(x))
        model.compile(optimizer, "mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        model.fit(
            images,
            targets,
            batch_size=8,
            epochs=2,
            verbose=0,
            validation_data=(images, targets),
            callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)],
        )
        return values(model.weights)

    def sgd():
        return keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)

    for a, b in zip(train(sgd()), train(keras_sgs.SGSWrapper(sgd()))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


KERAS_OPTIMIZERS = {
    "Adam": lambda: keras.optimizers.Adam(0.01),
    "AdamW": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "Adamax": lambda: keras.optimizers.Adamax(0.01),
    "Nadam": lambda: keras.optimizers.Nadam(0.01),
    "RMSprop": lambda: keras.optimizers.RMSprop(0.01),
    "Adagrad": lambda: keras.optimizers.Adagrad(0.01),
    "Adadelta": lambda: keras.optimizers.Adadelta(0.5),
    "Adafactor": lambda: keras.optimizers.Adafactor(0.01),
    "Lion": lambda: keras.optimizers.Lion(0.01, weight_decay=0.1),
    "Lamb": lambda: keras.optimizers.Lamb(0.01),
    "Ftrl": lambda: keras.optimizers.Ftrl(0.01),
    "Muon": lambda: keras.optimizers.Muon(
        0.01, weight_decay=0.5, adam_weight_decay=0.05
    ),
}


@pytest.mark.parametrize("name", sorted(KERAS_OPTIMIZERS))
def test_update_mode_with_all_ones_masks_is_the_inner_optimizer(name):
    make = KERAS_OPTIMIZERS[name]
    _, variables, start, steps = random_problem(12, 3)
    plain = trajectory(make(), variables, start, steps)
    wrapped = trajectory(
        keras_sgs.SGSWrapper(make(), mode="update"), variables, start, steps
    )
    for a, b in zip(plain[-1], wrapped[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make, rate",
    [
        (lambda: keras.optimizers.AdamW(0.1, weight_decay=0.2), 0.2),
        # Muon decays conv kernels (not 2-D) with `adam_weight_decay`.
        (
            lambda: keras.optimizers.Muon(
                0.1, weight_decay=0.5, adam_weight_decay=0.05
            ),
            0.05,
        ),
    ],
)
def test_update_mode_decays_zero_mask_positions_by_the_inner_rule(make, rate):
    model, variables, start, steps = random_problem(13, 1)
    kernel = model.get_layer("conv2d").kernel
    optimizer = _built(keras_sgs.SGSWrapper(make(), mode="update"), variables)
    optimizer.set_mask(kernel, np.zeros((3, 3)))
    old = keras.ops.convert_to_numpy(kernel).copy()
    optimizer.apply(steps[0], variables)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(kernel), old - old * rate * 0.1, rtol=1e-6
    )


def test_serialization_round_trip():
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9),
        mode="update",
        masks={"conv2d": ACB},
        coupled_weight_decay=5e-4,
        name="sgs",
    )
    config = optimizer.get_config()
    assert config["coupled_weight_decay"] == 5e-4
    clone = keras_sgs.SGSWrapper.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(restored, keras_sgs.SpatialGradientScaling)
    assert restored.get_config() == config
    assert keras.saving.get_registered_name(keras_sgs.SGSWrapper) == (
        "keras_sgs>SGSWrapper"
    )


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: keras_sgs.SGSWrapper(3), ValueError, "inner_optimizer=3"),
        (
            lambda: keras_sgs.SGSWrapper(
                keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
            ),
            ValueError,
            "LossScaleOptimizer",
        ),
        (
            lambda: keras_sgs.SGSWrapper(
                keras_sgs.SGSWrapper(keras.optimizers.SGD())
            ),
            ValueError,
            "already an SGSWrapper",
        ),
        (
            lambda: keras_sgs.SGSWrapper(
                keras.optimizers.MultiOptimizer(
                    keras.optimizers.OptimizerMap(keras.optimizers.SGD())
                )
            ),
            ValueError,
            "MultiOptimizer",
        ),
        (
            lambda: keras_sgs.SGSWrapper(keras.optimizers.SGD(), mode="grad"),
            ValueError,
            "mode='grad'",
        ),
        (
            lambda: keras_sgs.SGSWrapper(
                keras.optimizers.SGD(gradient_accumulation_steps=2),
                mode="update",
            ),
            ValueError,
            "gradient_accumulation_steps=2",
        ),
        (
            lambda: keras_sgs.SGSWrapper(
                keras.optimizers.Adam(use_ema=True), mode="update"
            ),
            ValueError,
            "use_ema=True",
        ),
        (
            lambda: keras_sgs.SGSWrapper(keras.optimizers.SGD(), clipnorm=1.0),
            ValueError,
            "clipnorm",
        ),
        (
            lambda: keras_sgs.SGSWrapper(keras.optimizers.SGD(), masks="ones"),
            ValueError,
            "masks='ones'",
        ),
        (
            lambda: keras_sgs.SGSWrapper(keras.optimizers.SGD(), masks=-ACB),
            ValueError,
            "non-negative",
        ),
        (
            lambda: keras_sgs.SGSWrapper(
                keras.optimizers.SGD(), masks={3: ACB}
            ),
            ValueError,
            "key=3",
        ),
    ]
    + [
        (
            lambda value=value: keras_sgs.SGSWrapper(
                keras.optimizers.SGD(), coupled_weight_decay=value
            ),
            ValueError,
            f"coupled_weight_decay={value!r}",
        )
        for value in (-1e-4, float("nan"), float("inf"), "5e-4", True)
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_masks_and_variables_at_build_and_set():
    model = mixed_model()
    variables = model.trainable_variables
    for masks, match in [
        ({"no_such_layer": ACB}, "no_such_layer"),
        (np.ones((5, 5)), r"shape \(5, 5\)"),
        ({"conv2d": np.ones((5, 5))}, r"masks\['conv2d'\]"),
    ]:
        optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(), masks=masks)
        with pytest.raises(ValueError, match=match):
            optimizer.build(variables)
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD())
    kernel = model.get_layer("conv2d").kernel
    with pytest.raises(ValueError, match="not built"):
        optimizer.get_mask(kernel)
    optimizer.build(variables)
    with pytest.raises(ValueError, match="dense/kernel"):
        optimizer.set_mask(model.get_layer("dense").kernel, np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"\(3, 3\).*Received.*\(5, 5\)"):
        optimizer.set_mask(kernel, np.ones((5, 5)))
    with pytest.raises(ValueError, match="non-negative"):
        optimizer.set_mask(kernel, -np.ones((3, 3)))
    stranger = keras.Variable(np.ones((3, 3, 1, 1)))
    with pytest.raises(ValueError, match="not one of the variables"):
        optimizer.get_mask(stranger)
    with pytest.raises(ValueError, match="without `trainable_variables`"):
        keras_sgs.SGSWrapper(keras.optimizers.SGD()).apply([kernel])


# -- Found by Keras's own optimizer tests (test_keras_optimizer_suite.py) --


def dense_problem(seed, num_steps):
    """A model with no conv kernel: the wrapper has nothing to mask."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    variables = model.trainable_variables
    steps = [random_grads(variables, rng) for _ in range(num_steps)]
    return model, variables, values(variables), steps


@pytest.mark.parametrize("problem", ["dense", "conv_kernels_excluded"])
def test_update_mode_with_weight_decay_and_no_decayed_kernel(problem):
    """sgd_test.py::test_weight_decay failed in update mode on PyTorch,
    whose decay fails on an empty list of variables."""
    if problem == "dense":
        _, variables, start, steps = dense_problem(14, 3)
        excluded = []
    else:
        model, variables, start, steps = random_problem(14, 3)
        excluded = [v for v in variables if v.path in SCALED]

    def sgd():
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1)
        optimizer.exclude_from_weight_decay(var_list=excluded)
        return optimizer

    plain = trajectory(sgd(), variables, start, steps)
    with warns_if(problem == "dense", "no conv kernel to scale"):
        wrapped = trajectory(
            keras_sgs.SGSWrapper(sgd(), mode="update"), variables, start, steps
        )
    _assert_same_values(plain[-1], wrapped[-1])


def test_name_and_variable_paths_are_the_inner_optimizers():
    """multi_optimizer_test.py::test_tensorboard_logging_with_multi_optimizer:
    TensorBoard logs each part of a MultiOptimizer as
    `learning_rate_{name}`."""
    _, variables, start, steps = random_problem(15, 1)
    plain = keras.optimizers.SGD(0.1, momentum=0.9, name="convs")
    wrapper = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1, momentum=0.9, name="convs")
    )
    assert wrapper.name == "convs"
    assert keras_sgs.SGSWrapper(plain, name="sgs").name == "sgs"
    trajectory(plain, variables, start, steps)
    trajectory(wrapper, variables, start, steps)
    assert [v.path for v in wrapper.inner_optimizer.variables] == [
        v.path for v in plain.variables
    ]


SETTINGS = {
    "weight_decay": 0.1,
    "clipnorm": 1.0,
    "use_ema": True,
    "ema_momentum": 0.5,
    "ema_overwrite_frequency": 3,
    "loss_scale_factor": 4.0,
    "gradient_accumulation_steps": 2,
}


def test_settings_are_the_inner_optimizers():
    """optimizer_test.py::test_clip_args read `clipnorm` from the wrapper."""
    inner = keras.optimizers.SGD(0.1, **SETTINGS)
    wrapper = keras_sgs.SGSWrapper(inner)
    for name, value in SETTINGS.items():
        assert getattr(wrapper, name) == value, name
    wrapper.clipnorm = 2.0
    assert inner.clipnorm == 2.0
    for name in ("clipvalue", "global_clipnorm"):
        inner = keras.optimizers.SGD(0.1, **{name: 0.5})
        assert getattr(keras_sgs.SGSWrapper(inner), name) == 0.5


def test_set_weights_before_build_fails_as_keras_does():
    """optimizer_test.py::test_set_weights matches Keras's message."""
    for optimizer in (
        keras.optimizers.Adam(),
        keras_sgs.SGSWrapper(keras.optimizers.Adam(), mode="update"),
    ):
        with pytest.raises(ValueError, match="You are calling `set_weights"):
            optimizer.set_weights([])


@pytest.mark.parametrize("mode", ["gradient", "update"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Muon(0.1),
    ],
)
def test_update_step_is_the_inner_update_step(make, mode):
    """muon_test.py::test_muon_single_step called `update_step` on the
    wrapper (Keras's base class raised NotImplementedError)."""
    _, variables, start, steps = random_problem(16, 2)

    def step_by_step(optimizer):
        for v, x in zip(variables, start):
            v.assign(x)
        optimizer.build(variables)
        for grads in steps:
            for g, v in zip(grads, variables):
                optimizer.update_step(g, v, 0.1)
        return values(variables)

    inner = make()
    plain = step_by_step(inner)
    muon = isinstance(inner, keras.optimizers.Muon)
    with warns_if(muon and mode == "gradient", "around Muon"):
        wrapped = step_by_step(keras_sgs.SGSWrapper(make(), mode=mode))
    _assert_same_values(plain, wrapped)


@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_update_step_masks(mode):
    model, variables, start, steps = random_problem(17, 1)
    kernel = model.get_layer("conv2d").kernel
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.1), mode=mode, masks={"conv2d": ACB}
    )
    optimizer.build(variables)
    grad = steps[0][[v.path for v in variables].index(kernel.path)]
    before = keras.ops.convert_to_numpy(kernel).copy()
    optimizer.update_step(grad, kernel, 0.1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(kernel),
        before - 0.1 * ACB[..., None, None] * keras.ops.convert_to_numpy(grad),
        rtol=1e-6,
        atol=1e-6,
    )


def test_swap_ema_weights_with_a_multi_optimizer():
    """multi_optimizer_test.py::test_swap_ema_weights_with_multi_optimizer:
    `SwapEMAWeights` swaps the averages of each part of a MultiOptimizer
    with `use_ema`, which an SGSWrapper part must say it has."""
    rng = np.random.default_rng(18)
    images = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    targets = rng.normal(size=(16, 2)).astype("float32")

    def train(wrap):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
        convs = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5)
        if wrap:
            convs = keras_sgs.SGSWrapper(convs)
        optimizer = keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(
                keras.optimizers.SGD(0.1), optimizer_map={"conv/.*": convs}
            )
        )
        model.compile(optimizer, "mse")
        model.fit(
            images,
            targets,
            batch_size=8,
            epochs=2,
            verbose=0,
            validation_data=(images, targets),
            callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)],
        )
        return values(model.weights)

    plain = train(wrap=False)
    for a, b in zip(plain, train(wrap=True)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# -- Masks that broadcast to the kernel: per output channel, full shape -----


def _channel_rule(layer, kernel):
    """A per-layer rule: per output channel for `conv2d`, the full kernel
    shape for `depthwise`, spatial ones (None) elsewhere."""
    shape = tuple(kernel.shape)
    if layer.name == "conv2d":
        return np.arange(1, shape[-1] + 1, dtype="float32").reshape(
            (1, 1, 1, -1)
        ) * np.ones(shape[:-2] + (1, 1))
    if layer.name == "depthwise":
        return np.linspace(0.0, 2.0, np.prod(shape)).reshape(shape)
    return None


def test_broadcasting_masks_take_the_shape_of_their_initial_mask():
    model = mixed_model()
    variables = model.trainable_variables
    optimizer = _built(
        keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1), masks=_channel_rule),
        variables,
    )
    shapes = {
        v.path: tuple(optimizer.get_mask(v).shape)
        for v in variables
        if optimizer.get_mask(v) is not None
    }
    assert shapes == {
        "conv2d/kernel": (3, 3, 1, 4),
        "depthwise/kernel": (3, 3, 4, 1),
        "separable/depthwise_kernel": (3, 3, 1, 1),
        "transpose/kernel": (3, 3, 1, 1),
        "conv1d/kernel": (3, 1, 1),
        "conv3d/kernel": (3, 3, 3, 1, 1),
    }
    kernel = model.get_layer("conv2d").kernel
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(optimizer.get_mask(kernel))[1, 1, 0],
        [1, 2, 3, 4],
    )
    # By layer name or path, and one array for every kernel it fits.
    optimizer = _built(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.1),
            masks={"conv2d": np.ones((3, 3, 3, 4)), "conv1d/kernel": [1, 2, 1]},
        ),
        variables,
    )
    assert tuple(optimizer.get_mask(kernel).shape) == (3, 3, 3, 4)
    optimizer = _built(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.1), masks=np.ones((3, 3, 1, 4))
        ),
        variables,
    )
    assert tuple(optimizer.get_mask(kernel).shape) == (3, 3, 1, 4)
    transpose = model.get_layer("transpose").kernel
    assert tuple(optimizer.get_mask(transpose).shape) == (3, 3, 1, 4)
    depthwise = model.get_layer("depthwise").kernel
    assert tuple(optimizer.get_mask(depthwise).shape) == (3, 3, 1, 1)


def _raising_rule(layer, kernel):
    if layer.name == "depthwise":
        raise RuntimeError("no rule for depthwise")
    return None


@pytest.mark.parametrize(
    "masks, match",
    [
        (
            {"conv2d": np.ones((3, 3, 1, 5))},
            r"layer 'conv2d'.*\(3, 3, 3, 4\).*mask shape \(3, 3, 1, 5\)",
        ),
        (
            {"conv2d": np.ones((3, 3, 4))},
            r"layer 'conv2d'.*\(3, 3, 3, 4\).*mask shape \(3, 3, 4\)",
        ),
        (
            lambda layer, kernel: np.ones((2, 2, 1, 1)),
            r"layer '\w+'.*of shape \(.*\).*mask shape \(2, 2, 1, 1\)",
        ),
        (
            lambda layer, kernel: -np.ones(tuple(kernel.shape[:-2])),
            r"layer '\w+'.*non-negative",
        ),
        (
            _raising_rule,
            r"raised for layer 'depthwise'.*\(3, 3, 4, 1\).*RuntimeError: "
            "no rule for depthwise",
        ),
    ],
)
def test_masks_that_do_not_fit_their_kernel_fail_at_build(masks, match):
    model = mixed_model()
    optimizer = keras_sgs.SGSWrapper(keras.optimizers.SGD(), masks=masks)
    with pytest.raises(ValueError, match=match):
        optimizer.build(model.trainable_variables)


def test_set_mask_broadcasts_spatial_values_over_the_channels():
    model = mixed_model()
    optimizer = _built(
        keras_sgs.SGSWrapper(keras.optimizers.SGD(), masks=_channel_rule),
        model.trainable_variables,
    )
    kernel = model.get_layer("conv2d").kernel
    mask = optimizer.get_mask(kernel)
    spatial = np.arange(9.0).reshape(3, 3)
    for value in (spatial, spatial.reshape(3, 3, 1, 1)):
        optimizer.set_mask(kernel, value)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(mask),
            np.broadcast_to(spatial[..., None, None], (3, 3, 1, 4)),
        )
    channels = np.random.default_rng(0).uniform(size=(3, 3, 1, 4))
    optimizer.set_mask(kernel, channels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mask), channels)
    for bad in (np.ones((3, 3, 3, 4)), np.ones((3, 3, 1, 3)), np.ones(3)):
        with pytest.raises(
            ValueError, match=rf"\(3, 3, 1, 4\).*Received.*{bad.shape}"
        ):
            optimizer.set_mask(kernel, bad)
    with pytest.raises(ValueError, match="non-negative"):
        optimizer.set_mask(kernel, -channels)


def test_mi_scaling_callback_broadcasts_its_estimate_over_the_channels(
    cifar10_train,
):
    images, labels = cifar10_train
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    mask, kernel = keras_sgs.csla_conv((3, 3), 3, 8, np.linspace(1, 2, 8), 1.0)
    model.get_layer("c1").kernel.assign(kernel)
    model.compile(
        keras_sgs.SGSWrapper(keras.optimizers.SGD(0.01), masks={"c1": mask}),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = keras_sgs.MIScalingCallback(images[:32], warmup=0)
    model.fit(images[32:64], labels[32:64], verbose=0, callbacks=[callback])
    estimate = keras.ops.convert_to_numpy(
        keras_sgs.dependence_to_scaling(
            keras_sgs.spatial_dependence(images[:32], (3, 3))
        )
    )
    value = keras.ops.convert_to_numpy(
        model.optimizer.get_mask(model.get_layer("c1").kernel)
    )
    assert value.shape == (3, 3, 1, 8)
    for c in range(8):
        np.testing.assert_allclose(value[..., 0, c], estimate, atol=1e-5)


@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_broadcasting_masks_hand_computed_sgd_update(mode):
    rng = np.random.default_rng(7)
    model = mixed_model()
    variables = model.trainable_variables
    optimizer = _built(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.05),
            mode=mode,
            masks=_channel_rule,
            coupled_weight_decay=0.01,
        ),
        variables,
    )
    masks = [
        None if m is None else keras.ops.convert_to_numpy(m).astype("float64")
        for m in map(optimizer.get_mask, variables)
    ]
    start = values(variables)
    steps = [random_grads(variables, rng) for _ in range(3)]
    for grads in steps:
        optimizer.apply(grads, variables)
    # Keras SGD with decoupled decay on the masked gradient plus the
    # unmasked coupled decay, in numpy.
    expected = [x.astype(np.float64) for x in start]
    moments = [np.zeros_like(x) for x in expected]
    for grads in steps:
        for i, (g, mask) in enumerate(zip(grads, masks)):
            g = keras.ops.convert_to_numpy(g).astype(np.float64)
            g = g * (1.0 if mask is None else mask) + 0.01 * expected[i]
            expected[i] = expected[i] - expected[i] * 0.05 * 0.1
            moments[i] = moments[i] * 0.9 - g * 0.1
            expected[i] = expected[i] + moments[i]
    depthwise = model.get_layer("depthwise").kernel
    index = [v.path for v in variables].index(depthwise.path)
    frozen = masks[index] == 0
    assert frozen.sum() == 1
    if mode == "update":
        # Where the mask is 0 the update mode takes no step at all, only
        # the inner optimizer's decoupled decay (see the class docstring).
        expected[index] = np.where(
            frozen, start[index] * (1 - 0.05 * 0.1) ** 3, expected[index]
        )
    assert_variables_equal(variables, expected, rtol=2e-5, atol=2e-6)


def test_update_mode_scales_adam_steps_per_channel():
    model, variables, start, steps = random_problem(4, 3)
    plain = [start] + trajectory(
        keras.optimizers.Adam(0.01), variables, start, steps
    )
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.Adam(0.01), mode="update", masks=_channel_rule
    )
    trajectory(optimizer, variables, start, steps)
    for i, v in enumerate(variables):
        mask = optimizer.get_mask(v)
        mask = 1.0 if mask is None else keras.ops.convert_to_numpy(mask)
        expected = start[i] + sum(
            mask * (after[i] - before[i])
            for before, after in zip(plain, plain[1:])
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(v),
            expected,
            rtol=1e-4,
            atol=1e-6,
            err_msg=v.path,
        )


@keras.saving.register_keras_serializable(package="keras_sgs_tests")
def registered_channel_rule(layer, kernel):
    return _channel_rule(layer, kernel)


def test_serialization_of_broadcasting_masks_and_functions():
    per_channel = keras_sgs.mask_from_channel_branches(
        (3, 3), [((3, 3), [1.0, 2.0, 1.0, 0.5]), ((1, 1), 0.5)]
    )
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(), masks={"conv2d": per_channel}
    )
    config = optimizer.get_config()
    assert np.shape(config["masks"]["conv2d"]) == (3, 3, 1, 4)
    assert keras_sgs.SGSWrapper.from_config(config).get_config() == config
    # A registered function round-trips by name, as Keras activations do.
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(), masks=registered_channel_rule
    )
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert restored._initial_masks is registered_channel_rule
    # A lambda is stored as bytecode and needs safe_mode=False.
    optimizer = keras_sgs.SGSWrapper(
        keras.optimizers.SGD(), masks=lambda layer, kernel: None
    )
    with pytest.warns(UserWarning, match="lambda"):
        config = keras.optimizers.serialize(optimizer)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.optimizers.deserialize(config)
    restored = keras.saving.deserialize_keras_object(config, safe_mode=False)
    assert callable(restored._initial_masks)


def test_keras_file_round_trip_keeps_per_channel_masks(tmp_path):
    rng = np.random.default_rng(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    mask, kernel = keras_sgs.csla_conv((3, 3), 3, 4, [1, 2, 3, 4], 0.5, seed=0)
    model.get_layer("conv").kernel.assign(kernel)
    model.compile(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.1, momentum=0.9),
            masks={"conv": mask, "dw": np.ones((3, 3, 4, 1))},
        ),
        "mse",
    )
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    model.fit(x, y, verbose=0)
    conv, dw = model.get_layer("conv").kernel, model.get_layer("dw").kernel
    model.optimizer.set_mask(dw, rng.uniform(size=(3, 3, 4, 1)))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name, kernel in [("conv", conv), ("dw", dw)]:
        mask = loaded.optimizer.get_mask(loaded.get_layer(name).kernel)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(mask),
            keras.ops.convert_to_numpy(model.optimizer.get_mask(kernel)),
        )
    assert tuple(mask.shape) == (3, 3, 4, 1)
    model.fit(x, y, verbose=0)
    loaded.fit(x, y, verbose=0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.get_layer("conv").kernel),
        keras.ops.convert_to_numpy(conv),
        rtol=1e-5,
        atol=1e-6,
    )


# -- The theorem: SGD on parallel branches == SGS on the fused kernel ------

BRANCHES = [((3, 3), 1.0), ((1, 3), 0.7), ((3, 1), 1.3), ((1, 1), 0.5)]


class ParallelBranches(keras.layers.Layer):
    """`sum_i a_i * conv_i(x)`: the branched block (no BN, fixed scalars)."""

    def __init__(self, filters, branches, **kwargs):
        super().__init__(**kwargs)
        self.branches = branches
        self.convs = [
            keras.layers.Conv2D(
                filters, size, padding="same", use_bias=False, dtype=self.dtype
            )
            for size, _ in branches
        ]

    def call(self, x):
        return sum(
            a * conv(x) for conv, (_, a) in zip(self.convs, self.branches)
        )

    def fused_kernel(self):
        kernel = 0.0
        for conv, (size, a) in zip(self.convs, self.branches):
            w = keras.ops.convert_to_numpy(conv.kernel)
            pad = [((3 - s) // 2,) * 2 for s in size] + [(0, 0), (0, 0)]
            kernel = kernel + a * np.pad(w, pad)
        return kernel


def _head(x):
    x = keras.layers.ReLU(dtype="float64")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype="float64")(x)
    return keras.layers.Dense(10, dtype="float64", name="head")(x)


def _train_branched_and_sgs(images, labels, make_optimizer, mode, steps=50):
    inputs = keras.Input((32, 32, 3), dtype="float64")
    block = ParallelBranches(8, BRANCHES, dtype="float64")
    branched = keras.Model(inputs, _head(block(inputs)))
    conv = keras.layers.Conv2D(
        8, 3, padding="same", use_bias=False, dtype="float64"
    )
    fused = keras.Model(inputs, _head(conv(inputs)))
    conv.kernel.assign(block.fused_kernel())
    for a, b in zip(
        branched.get_layer("head").weights, fused.get_layer("head").weights
    ):
        b.assign(keras.ops.convert_to_numpy(a))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    branched.compile(make_optimizer(), loss)
    mask = keras_sgs.mask_from_branches((3, 3), BRANCHES)
    fused.compile(
        keras_sgs.SGSWrapper(make_optimizer(), mode=mode, masks=mask), loss
    )
    x = images.astype("float64")
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        branched.train_on_batch(x[batch], labels[batch])
        fused.train_on_batch(x[batch], labels[batch])
    expected = block.fused_kernel()
    actual = keras.ops.convert_to_numpy(conv.kernel)
    return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.fixture
def float64():
    if BACKEND == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        yield
        jax.config.update("jax_enable_x64", False)
    else:
        yield


def test_theorem_branches_equal_sgs_on_cifar10(cifar10_train, float64):
    images, labels = cifar10_train
    sgd = lambda: keras.optimizers.SGD(  # noqa: E731
        0.05, momentum=0.9, weight_decay=5e-4
    )
    error = _train_branched_and_sgs(images, labels, sgd, "gradient")
    print("relative difference, SGD:", error)
    assert error <= 1e-5, error
    # Adam normalises each element: masking its gradient is not the
    # branched dynamics.
    adam = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
    with pytest.warns(UserWarning, match="mode='update'"):
        error = _train_branched_and_sgs(images, labels, adam, "gradient")
    print("relative difference, Adam:", error)
    assert error > 1e-2, error


# -- The theorem per output channel: RepOptimizer's CSLA block --------------


class CSLABlock(keras.layers.Layer):
    """`a * conv3x3(x) + b * conv1x1(x) + s * x`, the scales constant per
    output channel (RepOptimizer's CSLA block: no BN, nothing trained but
    the two kernels). `s=None`: no identity branch. `l2`: an L2 penalty on
    the kernels, i.e. coupled weight decay `2 * l2 * V` in their gradient."""

    def __init__(self, filters, a, b, s=None, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b, self.s = a, b, s
        self.convs = [
            keras.layers.Conv2D(
                filters,
                size,
                padding="same",
                use_bias=False,
                kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                dtype=self.dtype,
            )
            for size in (3, 1)
        ]

    def call(self, x):
        a, b = (
            keras.ops.convert_to_tensor(t, x.dtype) for t in (self.a, self.b)
        )
        y = a * self.convs[0](x) + b * self.convs[1](x)
        if self.s is None:
            return y
        return y + keras.ops.convert_to_tensor(self.s, x.dtype) * x

    def fused_kernel(self):
        k3, k1 = (keras.ops.convert_to_numpy(c.kernel) for c in self.convs)
        kernel = self.a * k3
        kernel[1, 1] += self.b * k1[0, 0]
        if self.s is not None:
            kernel[1, 1] += np.diag(self.s)
        return kernel


def _regularized_head(x, l2):
    regularizer = keras.regularizers.L2(l2) if l2 else None
    x = keras.layers.ReLU(dtype="float64")(x)
    x = keras.layers.GlobalAveragePooling2D(dtype="float64")(x)
    return keras.layers.Dense(
        10,
        dtype="float64",
        name="head",
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
    )(x)


def _train_csla_and_sgs(images, labels, filters, identity, decay, steps=50):
    """Trains the CSLA block with SGD (momentum 0.9, coupled decay `decay`
    as an L2 penalty on every variable) and one conv with SGSWrapper, the
    per-channel mask and `coupled_weight_decay=decay`; returns the relative
    difference of the fused kernels."""
    # Keras sums the regularization losses in floatx.
    keras.config.set_floatx("float64")
    a = np.linspace(0.5, 1.5, filters)
    b = np.linspace(1.2, 0.2, filters)
    s = np.linspace(0.8, 1.2, filters) if identity else None
    inputs = keras.Input((32, 32, 3), dtype="float64")
    block = CSLABlock(filters, a, b, s, l2=decay / 2, dtype="float64")
    branched = keras.Model(inputs, _regularized_head(block(inputs), decay / 2))
    conv = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        dtype="float64",
        name="fused",
    )
    fused = keras.Model(inputs, _regularized_head(conv(inputs), 0.0))
    conv.kernel.assign(block.fused_kernel())
    for x, y in zip(
        branched.get_layer("head").weights, fused.get_layer("head").weights
    ):
        y.assign(keras.ops.convert_to_numpy(x))
    mask = keras_sgs.mask_from_channel_branches(
        (3, 3), [((3, 3), a), ((1, 1), b)]
    )
    csla_mask, _ = keras_sgs.csla_conv((3, 3), 3, filters, a, b, identity=s)
    np.testing.assert_array_equal(mask, csla_mask)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    branched.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss)
    fused.compile(
        keras_sgs.SGSWrapper(
            keras.optimizers.SGD(0.05, momentum=0.9),
            masks={"fused": mask},
            coupled_weight_decay=decay or None,
        ),
        loss,
    )
    x = images.astype("float64")
    for step in range(steps):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        branched.train_on_batch(x[batch], labels[batch])
        fused.train_on_batch(x[batch], labels[batch])
    assert tuple(fused.optimizer.get_mask(conv.kernel).shape) == (
        3,
        3,
        1,
        filters,
    )
    expected = block.fused_kernel()
    actual = keras.ops.convert_to_numpy(conv.kernel)
    return np.abs(actual - expected).max() / np.abs(expected).max()


def test_theorem_csla_block_equals_per_channel_sgs_on_cifar10(
    cifar10_train, float64
):
    """SGD on `W[..., c] = a_c V3[..., c] + b_c pad(V1)[..., c] + s_c I`
    equals SGD on `W` with its gradient multiplied by `a_c**2` everywhere
    and `a_c**2 + b_c**2` at the centre: `grad(V3)[..., c] = a_c *
    grad(W)[..., c]`, `grad(V1)[..., c] = b_c * centre(grad(W))[..., c]`,
    and momentum is linear, so the fused momentum buffer follows the
    masked gradient exactly, with `W` starting at the fused kernel.

    Coupled decay `wd * V` on the branches adds `wd * (W - s I)` to the
    fused buffer: exactly SGSWrapper's unmasked `wd * W` when there is no
    identity branch, per-channel scales or not. The constant identity is
    not a trained parameter and does not decay, while a decay on the fused
    kernel pulls `s I` towards 0 too (RepOptimizer decays the fused
    kernel); no decay of `W` alone is exact then. So: the identity block
    exactly without decay, the block without identity exactly with coupled
    decay, and identity plus decay measurably apart.
    """
    images, labels = cifar10_train
    error = _train_csla_and_sgs(images, labels, 3, identity=True, decay=0.0)
    print("relative difference, identity, no decay:", error)
    assert error <= 1e-5, error
    error = _train_csla_and_sgs(images, labels, 8, identity=False, decay=5e-4)
    print("relative difference, no identity, coupled decay:", error)
    assert error <= 1e-5, error
    error = _train_csla_and_sgs(images, labels, 3, identity=True, decay=5e-4)
    print("relative difference, identity, coupled decay:", error)
    assert error > 1e-4, error


_MODEL_PARALLEL_SCRIPT = """
import json
import keras
import numpy as np
import keras_sgs
from keras import distribution

mesh = distribution.DeviceMesh((1, 2), ("batch", "model"))
layout_map = distribution.LayoutMap(mesh)
# Keys that match both kernels' paths, and so their masks' names.
layout_map[".*c1.*kernel.*"] = (None, None, None, "model")
layout_map[".*c2.*kernel.*"] = (None, None, None, "model")
distribution.set_distribution(
    distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
)
inputs = keras.Input((8, 8, 3))
x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
x = keras.layers.Conv2D(4, 3, padding="same", name="c2")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(2)(x))
per_channel = np.ones((3, 3, 1, 4), "float32") * np.arange(1, 5)
model.compile(
    keras_sgs.SGSWrapper(
        keras.optimizers.SGD(0.01, momentum=0.9), masks={"c2": per_channel}
    ),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
images = np.random.default_rng(0).random((8, 8, 8, 3), "float32")
model.fit(
    images,
    np.zeros(8, "int32"),
    batch_size=4,
    verbose=0,
    callbacks=[keras_sgs.MIScalingCallback(images, warmup=0)],
)
specs = {}
for name in ("c1", "c2"):
    mask = model.optimizer.get_mask(model.get_layer(name).kernel)
    specs[name] = [list(mask.value.sharding.spec), mask.value.tolist()]
print("SPECS", json.dumps(specs))
"""


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution is JAX's")
def test_masks_have_their_own_layout_under_model_parallel():
    """JAX `ModelParallel` on two CPU devices: a `LayoutMap` key that
    matches a kernel's path never shards its mask. A mask of shape
    `(3, 3, 1, 1)` is replicated; a per-channel mask is sharded like its
    kernel's output axis. Training and a refresh run."""

    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    process = subprocess.run(
        [sys.executable, "-c", _MODEL_PARALLEL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    specs = json.loads(output.split("SPECS ")[1].splitlines()[0])
    (c1_spec, c1_mask), (c2_spec, c2_mask) = specs["c1"], specs["c2"]
    assert c1_spec == [None, None, None, None]
    assert not np.allclose(c1_mask, 1.0)  # refreshed
    assert c2_spec == [None, None, None, "model"]
    assert np.shape(c2_mask) == (3, 3, 1, 4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function")
@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_first_apply_inside_a_user_tf_function_builds_the_wrapper(mode):
    """keras.io's custom training loop on TensorFlow: the optimizer is
    built by its first `apply` inside the user's `tf.function`, where
    AutoGraph rewrites the Python it calls. With ones masks the step is
    plain SGD's, weight for weight."""
    import tensorflow as tf

    def model_and_step(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function  # autograph=True, the default
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_weights)
            optimizer.apply(grads, model.trainable_weights)

        return model, step

    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = np.array([0, 1, 1, 0])
    wrapper = keras_sgs.SGSWrapper(keras.optimizers.SGD(0.1), mode=mode)
    model, step = model_and_step(wrapper)
    step(x, y)
    step(x, y)
    reference, reference_step = model_and_step(keras.optimizers.SGD(0.1))
    reference_step(x, y)
    reference_step(x, y)
    assert wrapper.built and wrapper.iterations.numpy() == 2
    for w, r in zip(model.weights, reference.weights):
        # "update": W_old + 1 * (W_new - W_old), equal up to rounding.
        np.testing.assert_allclose(w.numpy(), r.numpy(), rtol=0, atol=1e-7)

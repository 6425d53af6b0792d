"""Every private Keras (and TensorFlow) API keras_sgs depends on, in one place.

Each has no public equivalent; each entry says why it is needed. Checked
against Keras 3.15.1 and TensorFlow 2.21 (the versions the tests pin, and the
floor in `pyproject.toml`). If a Keras release moves one, this module is the
only place to change, and `make test` fails where it is used.
"""

from keras.src.models.functional import Functional  # noqa: F401
from keras.src.utils.io_utils import print_msg  # noqa: F401
from keras.src.utils.tracking import no_automatic_dependency_tracking  # noqa: F401

# `Functional`: `MIScalingCallback` builds a sub-model from a Functional
#   (or Sequential) model's graph; `keras.Model` instances are not all
#   Functional, and only this class has the graph.
# `print_msg`: prints through Keras's own channel (absl logging or stdout,
#   as `keras.utils.disable_interactive_logging()` chooses), like Keras's
#   callbacks do.
# `no_automatic_dependency_tracking`: `SGSWrapper` keeps its masks in a
#   list aligned with the variables it optimizes (None for unscaled
#   ones); attribute tracking would turn the list into a tracked wrapper
#   and collect the masks a second time.


def flatten_layers(model, recursive=True):
    """Every layer inside `model` (nested models' layers too when
    `recursive`), without `model`: `Layer._flatten_layers`, which Keras's
    own layer walks use."""
    return model._flatten_layers(include_self=False, recursive=recursive)


def inbound_node_count(layer):
    """How many times `layer` is called in the graphs of Functional models
    (its inbound nodes)."""
    return len(layer._inbound_nodes)


# Base-optimizer internals: `SGSWrapper` records the variables it optimizes
# as `Optimizer.build` does, without the EMA and gradient accumulators that
# `build` would add (the inner optimizer keeps those).


@no_automatic_dependency_tracking
def record_variables(optimizer, var_list):
    """Records `var_list` as the variables `optimizer` optimizes, as
    `Optimizer.build` does."""
    optimizer._trainable_variables_indices = {
        optimizer._var_key(v): i for i, v in enumerate(var_list)
    }
    optimizer._trainable_variables = list(var_list)


def built_variables(optimizer):
    """The variables recorded by `record_variables` (or `build`)."""
    return optimizer._trainable_variables


def variable_index(optimizer, variable):
    """The position of `variable` among `built_variables(optimizer)`;
    raises `KeyError` for another variable."""
    return optimizer._get_variable_index(variable)


def check_variables_are_known(optimizer, variables):
    """Keras's `ValueError` for variables `optimizer` was not built with."""
    optimizer._check_variables_are_known(variables)


def distribution_strategy(optimizer):
    """The `tf.distribute` strategy a TensorFlow optimizer was created
    under."""
    return optimizer._distribution_strategy


def uses_weight_decay(optimizer, variable):
    """Whether `optimizer` decays `variable` (honours
    `exclude_from_weight_decay`); Keras keeps this rule private."""
    return optimizer._use_weight_decay(variable)


def apply_weight_decay(optimizer, variables):
    """Decays `variables` by `optimizer`'s own rule (Muon, for one, has its
    own), as its `apply` does before the step."""
    optimizer._apply_weight_decay(variables)


def moving_averages(optimizer):
    """The EMA of the weights that `keras.callbacks.SwapEMAWeights` swaps;
    raises AttributeError when the optimizer keeps none."""
    return optimizer._model_variables_moving_average


def merge_call(fn, strategy, *args):
    """`tf.distribute`'s `maybe_merge_call`: runs `fn(strategy, *args)` in
    cross-replica context, where an assignment reaches every replica;
    Keras's own TensorFlow optimizer uses it the same way."""
    import tensorflow as tf

    return tf.__internal__.distribute.interim.maybe_merge_call(
        fn, strategy, *args
    )

"""The flags of `train_cifar.py` and `train_imagenet.py`, and which of them
define a run (a restart must not change those)."""

from absl import flags

from keras_sgs import recipes

# The recipe's methods, and RepOptimizer (`repopt`), which the scripts add:
# `baseline`'s optimizer with CSLA blocks' masks and initial kernels.
METHODS = tuple(recipes.METHODS) + ("repopt",)
SGS_METHODS = tuple(
    name for name, method in recipes.METHODS.items() if method.scales_gradients
) + ("repopt",)
CONV_TYPES = {  # other methods: "plain"
    name: method.conv_type
    for name, method in recipes.METHODS.items()
    if method.branched
}
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
# The flags that define a run: what it trains, on what, with which recipe.
# Recorded in --output_dir at the first start; a restart with other values
# is refused. (--strategy, --verbose, --mixed_precision... may change.)
DEFINING_FLAGS = (
    "model",
    "method",
    "width",
    "data",
    "test_data",
    "tfds_name",
    "num_classes",
    "num_train_examples",
    "epochs",
    "batch_size",
    "steps_per_epoch",
    "seed",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "refresh_every",
    "refresh_warmup",
    "refresh_batches",
    "mi_k",
    "diagonal_removal",
    "repopt_scale_3x3",
    "repopt_scale_1x1",
    "repopt_scales_file",
)


def define_flags(*, models, recipe, strategy, diagonal_removal, help_texts):
    """Defines the flags both training scripts take.

    Args:
        models: the `--model` choices; the first is the default.
        recipe: `keras_sgs.recipes.Recipe`: the defaults of the recipe's
            flags.
        strategy, diagonal_removal: the defaults of those flags.
        help_texts: dict, the help of `lr`, `weight_decay`, `data`,
            `tfds_name` and `num_classes`, which differ per script.
    """
    flags.DEFINE_enum("model", models[0], models, "Architecture.")
    flags.DEFINE_enum(
        "method",
        "baseline",
        METHODS,
        "baseline: plain convs, SGD. sgs_mi: SGSWrapper(SGD) with masks "
        "learned by MIScalingCallback. sgs_constant: SGSWrapper(SGD) with "
        "ACNet's fixed 3x3+1x3+3x1 mask. repopt: RepOptimizer (Ding et al., "
        "ICLR 2023) with constant scales: every 3x3 conv starts at a CSLA "
        "block's fused kernel (3x3 + 1x1 + identity) and trains with its "
        "per-output-channel gradient multiplier (keras_sgs.csla_conv). "
        "acb / repvgg: branched convs (keras_sgs.reparam), SGD; also "
        "evaluated after fusion.",
    )
    flags.DEFINE_integer(
        "epochs", recipe.epochs, "Training epochs.", lower_bound=1
    )
    flags.DEFINE_integer(
        "batch_size",
        recipe.batch_size,
        "Global batch size (split over the replicas).",
        lower_bound=1,
    )
    flags.DEFINE_float("lr", recipe.learning_rate, help_texts["lr"])
    flags.DEFINE_float("momentum", recipe.momentum, "SGD momentum.")
    flags.DEFINE_bool("nesterov", recipe.nesterov, "Nesterov momentum.")
    flags.DEFINE_float(
        "weight_decay", recipe.weight_decay, help_texts["weight_decay"]
    )
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_float(
        "width", 1.0, "Width multiplier of the model's channels."
    )
    flags.DEFINE_string("data", None, help_texts["data"])
    flags.DEFINE_string(
        "test_data", None, "TFRecord glob of the test images (with --data)."
    )
    flags.DEFINE_string("tfds_name", None, help_texts["tfds_name"])
    flags.DEFINE_string(
        "tfds_data_dir", None, "tensorflow_datasets data_dir (--tfds_name)."
    )
    flags.DEFINE_integer("num_classes", None, help_texts["num_classes"])
    flags.DEFINE_integer(
        "num_train_examples",
        None,
        "Training images in --data; counted with one pass when not given.",
    )
    flags.DEFINE_enum(
        "strategy",
        strategy,
        STRATEGIES,
        "default: one device. mirrored: MirroredStrategy over all local "
        "GPUs (two logical CPUs when there is no GPU). multiworker: "
        "MultiWorkerMirroredStrategy (TF_CONFIG). auto: multiworker when "
        "TF_CONFIG is set, else mirrored.",
    )
    flags.DEFINE_bool(
        "mixed_precision", False, "Train under the mixed_float16 policy."
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where the run's flags, backups, checkpoints, logs, history.json, "
        "masks.png and results.json go. Defaults to "
        "runs/<cifar|imagenet>/<model>_<method> in the repository.",
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Start over in --output_dir: delete what an earlier run with other "
        "flags (or a finished run) left there.",
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras verbosity: 0 silent, 1 progress bars, 2 one line per epoch.",
        lower_bound=0,
        upper_bound=2,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Training steps per epoch. Defaults to training images // batch_size.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "refresh_every",
        recipe.refresh_every,
        "SGS-MI: epochs between mask refreshes.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "refresh_warmup",
        recipe.refresh_warmup,
        "SGS-MI: the first epoch (0-based) that refreshes; masks are ones "
        "before it.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "refresh_batches",
        recipe.refresh_batches,
        "SGS-MI: held-out batches per refresh: the first training batches "
        "without augmentation (test preprocessing).",
        lower_bound=1,
    )
    flags.DEFINE_float(
        "mi_k", recipe.mi_k, "SGS-MI: sharpening k of the estimate."
    )
    flags.DEFINE_bool(
        "diagonal_removal",
        diagonal_removal,
        "SGS-MI: drop zero pairs and the histogram diagonal.",
    )
    flags.DEFINE_float(
        "repopt_scale_3x3",
        1.0,
        "repopt: the constant scale of every 3x3 branch (all channels).",
    )
    flags.DEFINE_float(
        "repopt_scale_1x1",
        1.0,
        "repopt: the constant scale of every 1x1 branch (all channels).",
    )
    flags.DEFINE_string(
        "repopt_scales_file",
        None,
        'repopt: a JSON file {conv layer name: {"scale_3x3": number or '
        'one per output channel, "scale_1x1": ...}} overriding the two '
        "constant scales per layer.",
    )
    flags.DEFINE_integer(
        "stop_after_epoch",
        None,
        "For testing resumption: exit (status 75, like a killed job) "
        "after this many epochs, once the backup is written.",
    )

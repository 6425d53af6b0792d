"""`plot_masks`: a heat-map grid of every layer's SGS mask."""

import math

import numpy as np

from keras_sgs import masks as masks_lib
from keras_sgs._arrays import to_numpy
from keras_sgs.sgs_wrapper import find_sgs_wrapper
from keras_sgs.sgs_wrapper import scaled_conv_layers


def model_masks(model):
    """Returns `{kernel variable path: mask}` (numpy, the kernel's spatial
    shape) for every conv layer the model's `SGSWrapper` scales, keyed as
    `MIScalingCallback.refresh()` keys them (paths stay unique where layer
    names repeat, as in nested blocks); a mask with channels (e.g. per
    output channel) gives its mean over the channels."""
    wrapper = find_sgs_wrapper(model.optimizer)
    if wrapper is None or not wrapper.built:
        raise ValueError(
            "`model` must be compiled with a built keras_sgs.SGSWrapper "
            f"(train a step first). Received: optimizer={model.optimizer!r}"
        )
    return {
        kernel.path: masks_lib.spatial_mean(to_numpy(wrapper.get_mask(kernel)))
        for _, kernel in scaled_conv_layers(model, wrapper)
    }


def plot_masks(masks, path, columns=6):
    """Writes a PNG grid of heat maps, one per layer's mask.

    1-D masks are drawn as one row; 3-D masks show their middle slice.

    Example:

    ```python
    keras_sgs.plot_masks(model, "masks.png")
    ```

    Args:
        masks: a compiled model (its `SGSWrapper`'s masks are drawn; a
            mask with channels, e.g. per output channel, shows its mean over
            the channels) or a dict `{title: 1-D to 3-D array}`.
        path: str. Where to write the PNG.
        columns: int. Heat maps per row. Defaults to 6.

    Returns:
        `path`.
    """
    # A Figure of its own, without pyplot: the user's matplotlib backend
    # (a notebook's, say) stays as it is, and no window opens.
    from matplotlib.figure import Figure

    if not isinstance(masks, dict):
        masks = model_masks(masks)
    if not masks:
        raise ValueError("`masks` is empty: there is nothing to plot.")
    rows = math.ceil(len(masks) / columns)
    cols = min(columns, len(masks))
    fig = Figure(figsize=(2.2 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, mask) in zip(axes.ravel(), masks.items()):
        mask = np.asarray(mask, dtype="float32")
        if mask.ndim == 1:
            mask = mask[None]
        elif mask.ndim == 3:
            mask = mask[mask.shape[0] // 2]
        image = ax.imshow(mask, cmap="viridis")
        for (i, j), value in np.ndenumerate(mask):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                color="white",
                fontsize=7,
            )
        ax.set_title(name, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path

"""Spatial Gradient Scaling (Detkov et al., ICLR 2023) for Keras 3."""

from keras_sgs import models
from keras_sgs import recipes
from keras_sgs import reparam
from keras_sgs.masks import csla_conv
from keras_sgs.masks import mask_from_branches
from keras_sgs.masks import mask_from_channel_branches
from keras_sgs.mi_scaling_callback import MIScalingCallback
from keras_sgs.mutual_info import dependence_to_scaling
from keras_sgs.mutual_info import spatial_dependence
from keras_sgs.plotting import plot_masks
from keras_sgs.sgs_wrapper import SGSWrapper
from keras_sgs.sgs_wrapper import SpatialGradientScaling

__version__ = "0.2.0"

__all__ = [
    "MIScalingCallback",
    "models",
    "recipes",
    "reparam",
    "SGSWrapper",
    "SpatialGradientScaling",
    "csla_conv",
    "dependence_to_scaling",
    "mask_from_branches",
    "mask_from_channel_branches",
    "plot_masks",
    "spatial_dependence",
]

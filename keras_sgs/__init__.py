"""Spatial Gradient Scaling (Detkov et al., ICLR 2023) for Keras 3."""

from keras_sgs.masks import mask_from_branches
from keras_sgs.sgs_wrapper import SGSWrapper
from keras_sgs.sgs_wrapper import SpatialGradientScaling

__version__ = "0.1.0"

__all__ = [
    "SGSWrapper",
    "SpatialGradientScaling",
    "mask_from_branches",
]

"""Torch building blocks (``import scellst.nn``; imports torch): the cell-image encoders' networks
and augmentations, and the MIL model's per-cell MLP, pooling and losses.

A face like :mod:`scellst.tl`: everything here is defined in a stage package,
:mod:`scellst.embedding` (augmentations, backbones, SSL) or :mod:`scellst.mil` (MLP, pooling,
losses). ``import scellst`` does not import this module.
"""

from ..embedding.augment import AugmentConfig, augment
from ..embedding.backbones import SmallResNet, build_backbone
from ..embedding.ssl import SSLModel
from ..mil.losses import mse_loss, nb_nll, poisson_nll
from ..mil.mlp import CellMLP
from ..mil.pooling import aggregate

__all__ = [
    "AugmentConfig",
    "CellMLP",
    "SSLModel",
    "SmallResNet",
    "aggregate",
    "augment",
    "build_backbone",
    "mse_loss",
    "nb_nll",
    "poisson_nll",
]

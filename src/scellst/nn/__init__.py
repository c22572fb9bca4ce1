"""Torch modules: the MIL model (per-cell MLP, bag aggregation, losses) and the cell-image
encoders (small ResNet, self-supervised MoCo v3 / BYOL, histology augmentations)."""

from .augment import AugmentConfig, augment
from .bags import aggregate
from .losses import mse_loss, nb_nll, poisson_nll
from .mlp import CellMLP
from .resnet import SmallResNet, build_backbone
from .ssl import SSLModel

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

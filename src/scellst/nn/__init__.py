"""Torch modules of the MIL model: the per-cell MLP, bag aggregation and the losses."""

from .bags import aggregate
from .losses import mse_loss, nb_nll, poisson_nll
from .mlp import CellMLP

__all__ = ["CellMLP", "aggregate", "mse_loss", "nb_nll", "poisson_nll"]

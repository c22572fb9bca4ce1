"""Tools: cell embeddings, the MIL model (fit), and per-cell prediction."""

from ._crops import CropBatch
from ._encoder import Encoder
from ._model import MILModel
from ._morphology import MorphologyEncoder
from ._segmentation_metrics import segmentation_metrics
from .embed import embed
from .fit import fit
from .predict import predict

__all__ = [
    "CropBatch",
    "Encoder",
    "MILModel",
    "MorphologyEncoder",
    "embed",
    "fit",
    "predict",
    "segmentation_metrics",
]

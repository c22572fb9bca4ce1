"""Tools: cell embeddings, the MIL model (fit), and per-cell prediction."""

import importlib

from ._crops import CropBatch
from ._encoder import Encoder
from ._morphology import MorphologyEncoder
from ._segmentation_metrics import segmentation_metrics
from .embed import embed

# The model code imports torch (~0.6 GB of memory): load it on first use, so that reading,
# segmenting and embedding slides never pay for it.
_LAZY = {"MILModel": "._model", "fit": ".fit", "predict": ".predict"}

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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # also replaces the submodule that the import bound to `name`
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__

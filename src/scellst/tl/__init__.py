"""Tools: cell embeddings, the MIL model (fit), and per-cell prediction."""

import importlib

from ._crops import CropBatch
from ._encoder import Encoder
from ._morphology import MorphologyEncoder
from ._segmentation_metrics import segmentation_metrics
from .embed import embed

# The model code imports torch (~0.6 GB of memory): load it on first use, so that reading,
# segmenting and embedding slides with the default encoder never pay for it.
_LAZY = {
    "MILModel": "._model",
    "fit": ".fit",
    "predict": ".predict",
    "TorchEncoder": "._torch_encoder",
    "SSLEncoder": "._torch_encoder",
    "pretrained_encoder": "._torch_encoder",
    "train_encoder": ".train_encoder",
    "evaluate": "._evaluate",
    "leave_one_slide_out": "._crossval",
    "CrossValidation": "._crossval",
}

__all__ = [
    "CropBatch",
    "CrossValidation",
    "Encoder",
    "MILModel",
    "MorphologyEncoder",
    "SSLEncoder",
    "TorchEncoder",
    "embed",
    "evaluate",
    "fit",
    "leave_one_slide_out",
    "predict",
    "pretrained_encoder",
    "segmentation_metrics",
    "train_encoder",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # also replaces the submodule that the import bound to `name`
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__

